"""External validation: a fitted run scored, without refitting, on the cache of another manifest.

`featx classify --external NAME=FEATURES_DIR` names a folder of caches built with the same
backbones and settings (`featx extract` on another dataset's manifest). Each run's model is
applied to the external cache of its own feature file (same file name, same pooling): its
test split (`--external-split test`, the default) or every row (`all`). Classes are matched by
name; `--label-map EXT=INT` renames the external set's classes first. A class the model never
saw is one ClassifyError sentence, raised while planning, before any fit.

This module holds the checks and the statistics (pure functions of labels and scores);
featx.results.validation applies each run's saved bundle and writes the run record's
"external" section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from featx.classify import evaluate
from featx.errors import ClassifyError, one_of_message
from featx.extract import store

EXTERNAL_SPLITS = ("test", "all")
ECE_BINS = 10
# cache attributes that must agree between the internal cache and its external twin (the recipe, not the data)
RECIPE_KEYS = ("backbone", "weights", "weights_sha256", "weights_seed", "image_size", "resize_mode", "preprocess")


def parse_external(text: str) -> tuple[str, Path]:
    """'NAME=FEATURES_DIR' -> (name, folder); ClassifyError for anything else."""
    name, sep, folder = str(text).partition("=")
    name, folder = name.strip(), folder.strip()
    if not sep or not name or not folder or "/" in name:
        raise ClassifyError(
            f"--external takes NAME=FEATURES_DIR (a name without '/', then the folder of the external set's "
            f"caches), e.g. --external site-b=features_b. Got {text!r} instead."
        )
    return name, Path(folder)


def parse_label_map(text: str | Sequence[str]) -> tuple[tuple[str, str], ...]:
    """'EXT=INT,EXT2=INT2' (or a list of such items) -> ((EXT, INT), ...); ClassifyError for a malformed item."""
    items = [text] if isinstance(text, str) else list(text)
    pairs: list[tuple[str, str]] = []
    for chunk in items:
        for item in str(chunk).split(","):
            if not item.strip():
                continue
            source, sep, target = item.partition("=")
            if not sep or not source.strip() or not target.strip():
                raise ClassifyError(
                    f"--label-map takes EXTERNAL=INTERNAL class names, comma-separated, e.g. "
                    f"--label-map Pneumonia=PNEUMONIA,Normal=NORMAL. Got {item!r} instead."
                )
            pairs.append((source.strip(), target.strip()))
    return tuple(pairs)


def externals_of(value) -> tuple[tuple[str, Path], ...]:
    """ClassifyConfig.externals as ((name, folder), ...): accepts pairs, a {name: folder} mapping or NAME=DIR strings."""
    if not value:
        return ()
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, str):
        items = [parse_external(value)]
    else:
        items = [parse_external(item) if isinstance(item, str) else tuple(item) for item in value]
    out: list[tuple[str, Path]] = []
    for name, folder in items:
        if any(name == seen for seen, _ in out):
            raise ClassifyError(f"The external set name {name!r} is given twice; give each --external its own name.")
        out.append((str(name), Path(folder)))
    return tuple(out)


def label_map_of(value) -> dict[str, str]:
    """ClassifyConfig.label_map as {external class: internal class}."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        return dict(parse_label_map(value))
    return {str(k): str(v) for k, v in value}


def check_split(split: str) -> str:
    if split not in EXTERNAL_SPLITS:
        raise ClassifyError(one_of_message("external_split", split, list(EXTERNAL_SPLITS)))
    return split


def external_cache(folder: Path, internal_cache: Path) -> Path:
    """The external twin of an internal cache: the same file name in the external folder."""
    return Path(folder) / Path(internal_cache).name


def source_rows(folder: Path) -> store.CacheRows:
    """The rows (labels, splits, metadata) of an external set: those of its first complete cache."""
    caches = store.list_caches(folder)
    if not caches:
        raise ClassifyError(f"The external features folder '{folder}' holds no complete feature file (*.h5).")
    return store.read_rows(caches[0])


def selected_rows(rows, split: str) -> np.ndarray:
    """Row indices of an external set that are scored: readable images of its test split, or of every split."""
    ok = np.asarray(rows.ok, dtype=bool)
    if split == "all":
        return np.flatnonzero(ok)
    return np.flatnonzero(ok & (np.asarray(rows.split).astype(str) == "test"))


def map_labels(rows, classes: Sequence[str], label_map: Mapping[str, str], where: str) -> np.ndarray:
    """The external rows' labels in the model's class order: (N,) class index, or (N, K) 0/1 for multi-label.

    Classes are matched by name after `label_map` renames the external ones. A class with rows that the
    model never saw -> ClassifyError naming it, how many rows carry it and what the model knows.
    """
    classes = [str(c) for c in classes]
    external = [label_map.get(str(c), str(c)) for c in rows.classes]
    y = np.asarray(rows.y)
    if y.ndim == 2:
        out = np.zeros((len(y), len(classes)), dtype=np.int8)
        for k, name in enumerate(external):
            present = int(y[:, k].sum())
            if name not in classes:
                if present:
                    _unseen(where, rows.classes[k], name, present, classes)
                continue
            out[:, classes.index(name)] = np.maximum(out[:, classes.index(name)], y[:, k])
        return out
    index = np.full(len(external), -1, dtype=int)
    for k, name in enumerate(external):
        if name in classes:
            index[k] = classes.index(name)
        elif np.any(y == k):
            _unseen(where, rows.classes[k], name, int(np.sum(y == k)), classes)
    return index[y.astype(int)].astype(np.int8)


def _unseen(where: str, original: str, mapped: str, count: int, classes: list[str]) -> None:
    renamed = f" (mapped to {mapped!r})" if mapped != original else ""
    raise ClassifyError(
        f"The external set {where} has class {original!r}{renamed} in {count} row(s), which the model never saw "
        f"(it knows {classes}); map it to one of those with --label-map {original}=CLASS, or leave its rows "
        "out of that manifest."
    )


def check_recipe(internal_attrs: dict, external_attrs: dict, internal: Path, external: Path) -> None:
    """ClassifyError when the external cache was not built with the internal cache's backbone recipe."""
    differing = [
        key
        for key in RECIPE_KEYS
        if _norm(internal_attrs.get(key)) != _norm(external_attrs.get(key)) and key in internal_attrs
    ]
    if differing:
        described = ", ".join(
            f"{key} {_norm(external_attrs.get(key))!r} instead of {_norm(internal_attrs.get(key))!r}"
            for key in differing
        )
        raise ClassifyError(
            f"The external cache '{external}' was not built like '{internal}' ({described}); extract the external "
            "manifest with the same backbone, weights, image size and resize mode."
        )


def _norm(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def check_externals(config, plans) -> None:
    """Before any fit: every external folder exists, holds each planned feature file's twin built the same
    way with the planned pooling (the metadata floor is built from the external rows), and its classes map
    onto the model's. ClassifyError, one sentence, on the first problem."""
    externals = externals_of(getattr(config, "externals", ()))
    if not externals:
        return
    split = check_split(getattr(config, "external_split", "test"))
    label_map = label_map_of(getattr(config, "label_map", ()))
    from featx.classify.metadata_floor import METADATA_FLOOR

    for name, folder in externals:
        if not Path(folder).is_dir():
            raise ClassifyError(
                f"The external features folder '{folder}' (--external {name}=...) does not exist; build it with "
                f"`featx extract --manifest OTHER.csv --data-root OTHER_DATA --out {folder}` and the same backbones."
            )
        checked: set[Path] = set()
        for plan in plans:
            if plan.cache in checked:
                continue
            checked.add(plan.cache)
            header = store.read_header(plan.cache)
            internal = store.read_rows(plan.cache)
            if plan.backbone == METADATA_FLOOR:
                rows = source_rows(folder)
            else:
                twin = external_cache(folder, plan.cache)
                if not twin.is_file():
                    raise ClassifyError(
                        f"The external set {name!r} has no '{twin.name}' in '{folder}' for the run(s) of "
                        f"'{plan.cache}'; extract that backbone from the external manifest into '{folder}', "
                        "or leave the backbone out with --backbone."
                    )
                twin_header = store.read_header(twin, verify=True)
                check_recipe(header.attrs, twin_header.attrs, plan.cache, twin)
                wanted = {p.pooling for p in plans if p.cache == plan.cache}
                missing = sorted(wanted - set(twin_header.poolings))
                if missing:
                    raise ClassifyError(
                        f"The external cache '{twin}' has no {missing[0]!r} embeddings (it holds "
                        f"{sorted(twin_header.poolings)}); re-extract it with --pooling {','.join(sorted(wanted))}."
                    )
                rows = store.read_rows(twin)
            where = f"{name!r} ('{folder}')"
            y = map_labels(rows, [str(c) for c in internal.classes], label_map, where)
            if len(selected_rows(rows, split)) == 0:
                raise ClassifyError(
                    f"The external set {where} has no readable {'test ' if split == 'test' else ''}rows to score; "
                    "pass --external-split all to score every row of its manifest."
                )
            del y


# ---------------------------------------------------------------- statistics


def calibration_bins(y_true, score, n_bins: int = ECE_BINS) -> dict:
    """Expected calibration error over equal-width probability bins, and the bins themselves (the reliability plot).

    ECE = sum over bins of (rows in bin / rows) x |mean predicted - observed fraction positive|.
    """
    y_true = np.asarray(y_true, dtype=float).reshape(-1)
    score = np.clip(np.asarray(score, dtype=float).reshape(-1), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1], right=False), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        inside = which == b
        count = int(inside.sum())
        if not count:
            continue
        predicted, observed = float(score[inside].mean()), float(y_true[inside].mean())
        ece += count / len(score) * abs(predicted - observed)
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": count,
                "predicted": predicted,
                "observed": observed,
            }
        )
    return {"ece": float(ece) if len(score) else None, "n_bins": n_bins, "bins": bins}


def _rates(y_true, score, threshold: float) -> dict:
    y_true = np.asarray(y_true).astype(int)
    called = np.asarray(score) >= threshold
    positives, negatives = y_true == 1, y_true == 0
    return {
        "sensitivity": float(called[positives].mean()) if positives.any() else None,
        "specificity": float((~called[negatives]).mean()) if negatives.any() else None,
    }


def _pairing(internal_sha256, external_sha256) -> np.ndarray | None:
    """Indices into the internal test rows, one per external row, when the external rows are the same images
    (same file sha256, same multiset); else None (the sets are disjoint or overlap only partly)."""
    internal_sha256 = [str(s) for s in internal_sha256]
    external_sha256 = [str(s) for s in external_sha256]
    if not internal_sha256 or "" in internal_sha256 or "" in external_sha256:
        return None
    if sorted(internal_sha256) != sorted(external_sha256):
        return None
    where: dict[str, list[int]] = {}
    for index, digest in enumerate(internal_sha256):
        where.setdefault(digest, []).append(index)
    return np.array([where[digest].pop(0) for digest in external_sha256])


def external_metrics(
    task: str,
    classes: Sequence[str],
    threshold: dict | None,
    internal_y,
    internal_score,
    external_y,
    external_score,
    internal_sha256=None,
    external_sha256=None,
) -> dict:
    """One external set's section of a run record, from the internal test and the external predictions.

    Returns {n, class_counts, test (evaluate.evaluate_test at the internal OOF threshold), auc, internal_auc,
    difference {kind ("paired" | "unpaired"), difference (external - internal), z, p_value},
    sensitivity, specificity (at the internal threshold), threshold_internal,
    threshold_external (evaluate.choose_threshold with the run's rule on the external rows, for comparison),
    calibration {internal, external} (binary: ECE and bins), note}.
    """
    classes = [str(c) for c in classes]
    external_y, external_score = np.asarray(external_y), np.asarray(external_score)
    internal_y, internal_score = np.asarray(internal_y), np.asarray(internal_score)
    value = threshold["value"] if threshold else None
    out: dict = {"n": int(len(external_y)), "note": None}
    if external_y.ndim == 2:
        out["class_counts"] = {c: int(external_y[:, k].sum()) for k, c in enumerate(classes)}
    else:
        out["class_counts"] = {c: int(np.sum(external_y == k)) for k, c in enumerate(classes)}
    single = external_y.ndim == 1 and len(np.unique(external_y)) < 2
    if single:
        out["test"] = None
        out["auc"] = None
        out["note"] = "the external rows hold a single class: no AUC"
    else:
        out["test"] = evaluate.evaluate_test(task, external_y, external_score, classes, value)
        out["auc"] = out["test"].get("auc")
    internal_auc = None
    if task == "binary" and len(np.unique(internal_y)) > 1:
        internal_auc = evaluate.delong_ci(internal_y, internal_score)
    elif task != "binary" and len(internal_y):
        internal_auc = evaluate.evaluate_test(task, internal_y, internal_score, classes, None).get("auc")
    out["internal_auc"] = internal_auc
    out["difference"] = None
    if out["auc"] and internal_auc and out["auc"].get("value") is not None and internal_auc.get("value") is not None:
        pairing = None
        if task == "binary" and internal_sha256 is not None and external_sha256 is not None:
            pairing = _pairing(internal_sha256, external_sha256)
            if pairing is not None and not np.array_equal(internal_y[pairing], external_y):
                pairing = None  # same images, other labels: the AUCs are not of the same question
        if pairing is not None:
            difference = float(out["auc"]["value"]) - float(internal_auc["value"])
            p = evaluate.delong_paired_pvalue(external_y, external_score, internal_score[pairing])
            out["difference"] = {
                "kind": "paired",
                "difference": difference,
                "z": None,
                "p_value": p,
                "n_paired": int(len(pairing)),
            }
        elif out["auc"].get("se") is not None and internal_auc.get("se") is not None:
            test = evaluate.independent_auc_test(out["auc"], internal_auc)
            out["difference"] = {"kind": "unpaired", **test}
    if task == "binary":
        out["threshold_internal"] = value
        rates = _rates(external_y, external_score, value) if value is not None else {}
        out["sensitivity"], out["specificity"] = rates.get("sensitivity"), rates.get("specificity")
        out["threshold_external"] = None
        if not single:
            chosen = evaluate.choose_threshold(external_y, external_score, rule=(threshold or {}).get("rule", "youden"))
            out["threshold_external"] = {
                "rule": chosen["rule"],
                "value": chosen["value"],
                "sensitivity": chosen["oof_sensitivity"],
                "specificity": chosen["oof_specificity"],
            }
        out["calibration"] = {
            "internal": calibration_bins(internal_y, internal_score),
            "external": calibration_bins(external_y, external_score),
        }
    return out


def auc_value(section: dict | None) -> float | None:
    """The external AUC of one external set's section, or None."""
    auc = (section or {}).get("auc") or {}
    value = auc.get("value") if isinstance(auc, dict) else None
    return None if value is None or not math.isfinite(value) else float(value)
