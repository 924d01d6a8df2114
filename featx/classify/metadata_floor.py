"""The metadata-only floor: what the manifest's metadata columns alone predict, through the same classifiers.

Chest X-ray AUCs are inflated by shortcuts (view position, device, site, age): a classifier that
sees only the metadata says how much of an image model's AUC those could carry. Stage two builds
`<features>/metadata.h5`, a cache like any other (backbone `metadata`, group "floor", weights
"none"), from the `/meta/<column>` datasets every cache of the manifest already carries:

- a column whose training values all read as numbers, with more than NUMERIC_MIN_VALUES distinct
  values, is numeric: (value - training mean) / training sd, a missing value 0, plus a 0/1
  "missing" column when any value is missing;
- any other column is categorical: one 0/1 column per value seen in training (the MAX_CATEGORIES
  most frequent; the rest and unseen values share an "other" column), "" counts as a value.

Columns constant over the training rows carry nothing and are left out; with none left there is
no floor. The encoder (JSON, in the cache attr `metadata_encoder`) is fitted on the training rows
(split train or val) only and encodes an external set the same way (classify/external.py).
The cache is rebuilt only when its source changes (attr `metadata_key`), so its runs are reused
like any other.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from featx.errors import CacheError
from featx.extract import store

METADATA_FLOOR = "metadata"

METADATA_POOLING = "avg"  # the one pooling the floor's cache holds: --pooling avg (the default) keeps it
FLOOR_GROUP = "floor"
ENCODER_VERSION = 1
NUMERIC_MIN_VALUES = 12
MAX_CATEGORIES = 30
TRAIN_SPLITS = ("train", "val")
# the floor within this much test AUC of the best image model (or not significantly below it) -> a warning
CLOSE_MARGIN = 0.05


def near_duplicates_skipped(backbone: str) -> str | None:
    """Why the near-duplicate audit does not run on this backbone's rows (the floor's), or None where it runs."""
    if backbone != METADATA_FLOOR:
        return None
    return (
        "the metadata floor's rows are encoded manifest columns, not image embeddings: images that share "
        "their metadata are identical rows there, not near-duplicate images"
    )


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fit_encoder(meta: Mapping[str, Sequence[str]], train_rows) -> dict:
    """The encoder of the metadata columns, fitted on `train_rows`: {version, columns: [...]} (JSON)."""
    columns = []
    for name in meta:
        values = np.asarray(meta[name]).astype(str)[np.asarray(train_rows, dtype=int)]
        distinct = set(values.tolist())
        if len(distinct) < 2:
            continue
        present = [v for v in values.tolist() if v != ""]
        numbers = [_number(v) for v in present]
        if present and all(n is not None for n in numbers) and len(set(present)) > NUMERIC_MIN_VALUES:
            array = np.array(numbers, dtype=float)
            sd = float(array.std()) or 1.0
            columns.append(
                {"name": name, "kind": "numeric", "mean": float(array.mean()), "sd": sd, "missing": "" in distinct}
            )
        else:
            counts = Counter(values.tolist())
            kept = sorted(counts, key=lambda v: (-counts[v], v))[:MAX_CATEGORIES]
            columns.append(
                {"name": name, "kind": "categorical", "values": sorted(kept), "other": len(counts) > len(kept)}
            )
    return {"version": ENCODER_VERSION, "columns": columns}


def feature_names(encoder: dict) -> list[str]:
    """One name per encoded column: 'age', 'age (missing)', 'view=AP', 'view (other)', ..."""
    names: list[str] = []
    for column in encoder["columns"]:
        if column["kind"] == "numeric":
            names.append(column["name"])
            if column["missing"]:
                names.append(f"{column['name']} (missing)")
        else:
            names += [f"{column['name']}={value}" for value in column["values"]]
            names.append(f"{column['name']} (other)")
    return names


def encode(meta: Mapping[str, Sequence[str]], encoder: dict, n_rows: int) -> np.ndarray:
    """(n_rows, D) float32: each row's metadata as the encoder's columns (a column the rows lack reads as "")."""
    parts = []
    for column in encoder["columns"]:
        values = np.asarray(meta.get(column["name"], [""] * n_rows)).astype(str)
        if column["kind"] == "numeric":
            numbers = np.array([_number(v) for v in values.tolist()], dtype=object)
            missing = np.array([n is None for n in numbers])
            scaled = np.array([0.0 if n is None else (n - column["mean"]) / column["sd"] for n in numbers])
            parts.append(scaled[:, None])
            if column["missing"]:
                parts.append(missing.astype(float)[:, None])
        else:
            known = column["values"]
            block = np.zeros((n_rows, len(known) + 1))
            position = {value: k for k, value in enumerate(known)}
            for row, value in enumerate(values.tolist()):
                block[row, position.get(value, len(known))] = 1.0
            parts.append(block)
    if not parts:
        return np.zeros((n_rows, 0), dtype=np.float32)
    return np.hstack(parts).astype(np.float32)


def _train_rows(rows) -> np.ndarray:
    split = np.asarray(rows.split).astype(str)
    return np.flatnonzero(np.isin(split, TRAIN_SPLITS) & np.asarray(rows.ok, dtype=bool))


def _key(rows, encoder: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(encoder, sort_keys=True).encode())
    digest.update(str(rows.attrs.get("manifest_sha256")).encode())
    digest.update(np.asarray(rows.ok, dtype=bool).tobytes())
    return digest.hexdigest()


def floor_path(features_dir) -> Path:
    return store.cache_path(Path(features_dir), METADATA_FLOOR)


def build_floor_cache(features_dir, source: Path) -> Path | None:
    """features_dir/metadata.h5 from the rows of the cache `source`; None when the manifest has no usable
    metadata column. An existing floor cache of the same source and encoder is left as it is (its runs are reused)."""
    rows = store.read_rows(source)
    encoder = fit_encoder(rows.meta, _train_rows(rows))
    if not encoder["columns"]:
        return None
    path = floor_path(features_dir)
    key = _key(rows, encoder)
    if path.is_file():
        try:
            if store.read_header(path).attrs.get("metadata_key") == key:
                return path
        except Exception:  # damaged or foreign: rebuilt below
            pass
    X = encode(rows.meta, encoder, len(rows.ids))
    ok = np.asarray(rows.ok, dtype=bool)
    X[~ok] = 0.0
    attrs = {
        key_: rows.attrs[key_]
        for key_ in ("featx_version", "manifest_sha256", "data_root", "image_size", "resize_mode", "dicom_window")
        if key_ in rows.attrs
    }
    attrs.update(
        backbone=METADATA_FLOOR,
        backbone_group=FLOOR_GROUP,
        weights="none",
        weights_sha256="",
        weights_seed=-1,
        preprocess="none",
        metadata_key=key,
        metadata_encoder=json.dumps(encoder),
        metadata_features=json.dumps(feature_names(encoder)),
        metadata_source=Path(source).name,
        extract_args="",
    )
    writer = store.open_writer(
        path,
        attrs=attrs,
        ids=[str(v) for v in rows.ids],
        labels=rows.y,
        classes=rows.classes,
        split=[str(v) for v in rows.split],
        patient_id=[str(v) for v in rows.patient_id],
        widths={METADATA_POOLING: X.shape[1]},
        meta={name: [str(v) for v in values] for name, values in rows.meta.items()},
        force=True,
    )
    if writer is None:
        return path
    with writer:
        writer.write(0, {METADATA_POOLING: X}, ok, sha256=[str(v) for v in rows.image_sha256])
        writer.finish()
    return path


def encoder_of(cache: Path) -> dict:
    """The encoder a floor cache was built with (its attr `metadata_encoder`)."""
    return json.loads(str(store.read_header(cache).attrs["metadata_encoder"]))


def external_matrix(floor_cache: Path, rows) -> np.ndarray:
    """An external set's rows encoded with the internal floor's encoder (the columns the model was fitted on)."""
    return encode(rows.meta, encoder_of(floor_cache), len(rows.ids))


def without_floor(config):
    """The config whose `backbones` name only image caches: `metadata` is planned by floor_plans, never found
    as a feature file (an explicit --backbone metadata alone means every image cache and the floor)."""
    from dataclasses import replace

    if not config.backbones or METADATA_FLOOR not in config.backbones:
        return config
    return replace(config, backbones=tuple(b for b in config.backbones if b != METADATA_FLOOR) or None)


def floor_plans(config, headers, plan_type) -> list:
    """The metadata floor's runs (one per classifier, pooling METADATA_POOLING), building its cache from the
    first image cache's rows; [] with config.metadata_floor off, no image cache, or no usable metadata column."""
    if not getattr(config, "metadata_floor", True) or not headers:
        return []
    source = headers[0]
    try:
        path = build_floor_cache(config.features_dir, source.path)
    except (OSError, CacheError):  # a read-only features folder, or another command writing it: no floor this time
        return []
    if path is None:
        return []
    from featx.classify.scoring import task_for
    from featx.classify.stage import split_rows

    rows_plans = []
    rows = store.read_rows(path)
    split = split_rows(rows, config)
    classes = [str(c) for c in rows.classes]
    facts = dict(task=task_for(rows.y, classes), n_classes=len(classes), n_train_rows=len(split.train))
    for classifier in config.classifiers:
        rows_plans.append(plan_type(path, METADATA_FLOOR, METADATA_POOLING, classifier, **facts))
    return rows_plans
