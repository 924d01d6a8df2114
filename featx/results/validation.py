"""Is it real? External validation, the metadata-only floor and the permutation null, as results.

- `score_externals` (the end of `featx classify --external NAME=DIR`): each saved run's bundle is
  applied, without refitting, to the external twin of its feature file, and the statistics of
  classify/external.py go into the run record's optional "external" section
  ({name: section}); a command without --external removes a stale one.
- `metadata_floor_sentence`: the leaderboard's line on what the metadata alone predicts, a
  warning when it comes close to the image models.
- `external_section`, `null_section`: the report's "External validation" and "Permutation null"
  sections (HTML and the reliability plots).

Records are read and written only through featx.results.records.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path

import numpy as np

from featx.classify import external
from featx.classify.metadata_floor import CLOSE_MARGIN, METADATA_FLOOR
from featx.extract import store
from featx.extract.backbones import PIXEL_FLOOR
from featx.results import records

FLOOR_BACKBONES = (PIXEL_FLOOR, METADATA_FLOOR)


def _e(value) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------- scoring the saved runs on external sets


def score_externals(config, paths, console=None) -> int:
    """Score every run in `paths` on config.externals; returns how many run records changed."""
    from featx.classify.metadata_floor import external_matrix
    from featx.classify.scoring import predict_scores

    externals = external.externals_of(getattr(config, "externals", ()))
    split = external.check_split(getattr(config, "external_split", "test"))
    label_map = external.label_map_of(getattr(config, "label_map", ()))
    changed = 0
    loaded: dict = {}
    internal_rows: dict = {}
    for path in paths:
        record = records.read_run(path)
        if not externals:
            if "external" in record:
                records.update_run(path, external=None)
                changed += 1
            continue
        model = records.load_bundle(records.bundle_path(Path(path).parent.parent, record["run_id"]))
        estimator, task, classes = model["estimator"], record["task"], [str(c) for c in record["classes"]]
        feature_path = Path(record.get("feature_path") or record["feature_file"])
        here = Path(config.features_dir) / feature_path.name
        if here.is_file():  # a moved project folder: the cache the run was just planned on (records.py reuses it)
            feature_path = here
        predictions = record.get("test_predictions") or {}
        internal_y = np.asarray(predictions.get("y_true", []))
        internal_score = np.asarray(predictions.get("score", []), dtype=float)
        internal_sha = None
        if feature_path not in internal_rows:
            try:
                rows = store.read_rows(feature_path)
                internal_rows[feature_path] = dict(zip(np.asarray(rows.ids).astype(str), rows.image_sha256))
            except Exception:  # the feature file moved: the difference is then unpaired
                internal_rows[feature_path] = None
        by_id = internal_rows[feature_path]
        if by_id is not None:
            internal_sha = [str(by_id.get(str(i), "")) for i in predictions.get("ids", [])]
        sections = {}
        for name, folder in externals:
            where = f"{name!r} ('{folder}')"
            if record["backbone"] == METADATA_FLOOR:
                key = (folder, "metadata", str(feature_path))
                if key not in loaded:
                    rows = external.source_rows(folder)
                    loaded[key] = (rows, external_matrix(feature_path, rows), "", "")
            else:
                twin = external.external_cache(folder, feature_path)
                key = (folder, str(twin), record["pooling"])
                if key not in loaded:
                    features = store.load(twin, record["pooling"])
                    loaded[key] = (features, features.X, str(twin), str(features.attrs.get("content_sha256", "")))
            rows, X, cache, content = loaded[key]
            selected = external.selected_rows(rows, split)
            y = external.map_labels(rows, classes, label_map, where)[selected]
            score = predict_scores(estimator, X[selected], task)
            metrics = external.external_metrics(
                task,
                classes,
                record.get("threshold"),
                internal_y,
                internal_score,
                y,
                score,
                internal_sha,
                np.asarray(rows.image_sha256).astype(str)[selected],
            )
            patients = np.asarray(rows.patient_id).astype(str)[selected]
            sections[name] = {
                "features_dir": str(folder),
                "feature_file": cache or None,
                "cache_content_sha256": content or None,
                "manifest_sha256": rows.attrs.get("manifest_sha256"),
                "split": split,
                "label_map": label_map,
                "n_patients": int(len(np.unique(patients))),
                **metrics,
            }
        new = json.loads(json.dumps(_plain(sections), allow_nan=False))
        if record.get("external") != new:
            records.update_run(path, external=new)
            changed += 1
        if console is not None:
            for name, section in new.items():
                console.print(f"external {name}: {record['run_id']}: {external_line(section)}")
    return changed


def _plain(value):
    from featx.jsonvalues import jsonable

    return jsonable(value)


def _auc_text(auc: dict | None) -> str:
    from featx.results.leaderboard import format_auc

    auc = auc or {}
    return format_auc(auc.get("value"), auc.get("ci_low"), auc.get("ci_high"))


def external_line(section: dict) -> str:
    """'AUC 0.812 [0.750–0.874] vs internal 0.951 [...]: -0.139 (unpaired, p = 0.002)'."""
    text = f"AUC {_auc_text(section.get('auc'))} vs internal {_auc_text(section.get('internal_auc'))}"
    difference = section.get("difference")
    if difference:
        p = difference.get("p_value")
        text += f": {difference['difference']:+.3f} ({difference['kind']}, p = {p:.3g})" if p is not None else ""
    if section.get("note"):
        text += f" ({section['note']})"
    return text


# ---------------------------------------------------------------- the metadata floor beside the leaderboard


def metadata_floor_sentence(runs: list[dict]) -> str | None:
    """One dataset's line on the metadata-only floor: its best run against the best image run, with a warning
    ("⚠ ...") when it comes within CLOSE_MARGIN of it or is not significantly below it (paired DeLong);
    None when the runs hold no metadata floor."""
    from featx.classify import evaluate
    from featx.results.leaderboard import _aligned, _comparable, _run_name, _sort_key, _test_auc, dataset_key

    ordered = [run for run in sorted(runs, key=_sort_key) if not math.isnan(_test_auc(run))]
    floor = next((run for run in ordered if run["backbone"] == METADATA_FLOOR), None)
    if floor is None:
        return None
    best = next((run for run in ordered if run["backbone"] not in FLOOR_BACKBONES), None)
    text = f"Metadata-only floor: {_run_name(floor)} reaches test AUC {_auc_text(floor['test']['auc'])}"
    if best is None:
        return f"{text}; no image model to compare it with."
    gap = _test_auc(best) - _test_auc(floor)
    p_value = None
    if _comparable(best) and _comparable(floor) and dataset_key(best) == dataset_key(floor):
        y_true, best_score = _aligned(best)
        p_value = float(evaluate.delong_paired_pvalue(y_true, best_score, _aligned(floor)[1]))
    tested = "" if p_value is None or math.isnan(p_value) else f" (paired DeLong p = {p_value:.3g})"
    close = gap < CLOSE_MARGIN or (p_value is not None and p_value >= 0.05)
    sentence = (
        f"{text}; the best image model, {_run_name(best)} ({_auc_text(best['test']['auc'])}), is {abs(gap):.3f} "
        f"{'above' if gap >= 0 else 'below'} it{tested}."
    )
    if close:
        how = "beats" if gap < 0 else "comes close to"
        return (
            f"⚠ {sentence} The metadata alone (view, sex, age, site, ...) {how} the image models: their AUC may "
            "ride on acquisition or population shortcuts, not on what the images show."
        )
    return sentence


# ---------------------------------------------------------------- report sections


def _reliability_png(run: dict, sections: dict) -> bytes | None:
    """Reliability diagram: the internal test and each external set (equal-width bins, marker size ~ rows)."""
    import matplotlib
    from matplotlib.figure import Figure

    lines = []
    first: dict = next(iter(sections.values()), {})
    internal = (first.get("calibration") or {}).get("internal")
    if internal and internal.get("bins"):
        lines.append((f"internal test: ECE {internal['ece']:.3f}", internal["bins"]))
    for name, section in sections.items():
        calibration = (section.get("calibration") or {}).get("external")
        if calibration and calibration.get("bins"):
            lines.append((f"{name}: ECE {calibration['ece']:.3f}", calibration["bins"]))
    if not lines:
        return None
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        figure = Figure(figsize=(5.0, 4.6), dpi=100, layout="constrained")
        ax = figure.subplots()
        ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="perfectly calibrated")
        for index, (label, bins) in enumerate(lines):
            x = [b["predicted"] for b in bins]
            y = [b["observed"] for b in bins]
            ax.plot(
                x,
                y,
                marker="o",
                markersize=4,
                linewidth=1.5,
                label=label,
                color=("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")[index % 5],
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("mean predicted probability (10 equal-width bins)")
        ax.set_ylabel("observed fraction positive")
        ax.set_title(f"Calibration, internal vs external — {run['run_id']}", fontsize=9)
        ax.legend(loc="upper left", fontsize=8)
        if run.get("random_weights"):
            figure.suptitle("RANDOM-INIT WEIGHTS: pipeline check, not ImageNet features", color="#b00020", fontsize=9)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def external_section(ranked: list[dict]) -> tuple[str, list[tuple[str, bytes]]]:
    """The report's "External validation" section and its plots [(file name, png)]: one row per run and
    external set; a reliability plot (internal vs each external set) of each feature file's best run."""
    with_external = [run for run in ranked if run.get("external")]
    if not with_external:
        return (
            "<p class='note'>No external validation: score every run on another dataset's caches with "
            "<code>featx classify --external NAME=FEATURES_DIR</code> (the same backbones extracted from the other "
            "manifest). See docs/validation.md.</p>",
            [],
        )
    head = (
        "run",
        "external set",
        "rows (patients)",
        "internal test AUC",
        "external AUC",
        "difference (p)",
        "sens / spec at internal threshold",
        "threshold: internal → external would choose",
        "ECE internal → external",
    )
    rows = []
    for run in with_external:
        for name, section in run["external"].items():
            difference = section.get("difference") or {}
            diff = (
                f"{difference['difference']:+.3f} ({_e(difference['kind'])}, p = {difference['p_value']:.3g})"
                if difference.get("difference") is not None and difference.get("p_value") is not None
                else "–"
            )
            chosen = section.get("threshold_external") or {}
            calibration = section.get("calibration") or {}
            ece = (
                f"{_fmt((calibration.get('internal') or {}).get('ece'))} → "
                f"{_fmt((calibration.get('external') or {}).get('ece'))}"
                if calibration
                else "–"
            )
            threshold = (
                f"{_fmt(section.get('threshold_internal'))} → {_fmt(chosen.get('value'))} "
                f"(sens {_fmt(chosen.get('sensitivity'), 2)}, spec {_fmt(chosen.get('specificity'), 2)})"
                if chosen
                else "–"
            )
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{cell}</td>"
                    for cell in (
                        _e(run["run_id"]),
                        f"{_e(name)} ({_e(section.get('split'))})",
                        f"{section.get('n')} ({section.get('n_patients')})",
                        _e(_auc_text(section.get("internal_auc"))),
                        _e(_auc_text(section.get("auc")))
                        + (f" <i>{_e(section['note'])}</i>" if section.get("note") else ""),
                        diff,
                        f"{_fmt(section.get('sensitivity'), 2)} / {_fmt(section.get('specificity'), 2)}",
                        threshold,
                        ece,
                    )
                )
                + "</tr>"
            )
    table = "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    note = (
        "<p class='note'>Each run's saved model applied without refitting to the same backbone's cache of another "
        "manifest. The difference is external − internal test AUC: paired DeLong where the external rows are the "
        "same images as the internal test rows, else an unpaired z-test of the two DeLong AUCs. Sensitivity and "
        "specificity use the threshold chosen on the internal out-of-fold predictions; the threshold the external "
        "set would have chosen (same rule) is shown for comparison only. ECE: expected calibration error over 10 "
        "equal-width bins.</p>"
    )
    import base64

    from featx.results.leaderboard import features_name

    plots: list[tuple[str, bytes]] = []
    best_of_file: dict[str, dict] = {}
    for run in with_external:  # ranked: the first run of each feature file is its best
        best_of_file.setdefault(features_name(run), run)
    figures = []
    for features, run in best_of_file.items():
        png = _reliability_png(run, run["external"])
        if png is None:
            continue
        name = f"external_calibration_{''.join(c if c.isalnum() or c in '-_.' else '_' for c in features)}.png"
        plots.append((name, png))
        figures.append(
            f"<figure><img alt='calibration internal vs external, {_e(run['run_id'])}' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"
            f"<figcaption>Calibration of {_e(run['run_id'])} (best of {_e(features)}), internal test vs external "
            f"— plots/{_e(name)}</figcaption></figure>"
        )
    figure = f"<div class='plots'>{''.join(figures)}</div>" if figures else ""
    return note + table + figure, plots


def null_section(ranked: list[dict]) -> str:
    """The report's "Permutation null" section: each run's null AUCs, p-value and whether it beats chance."""
    with_null = [run for run in ranked if run.get("null")]
    if not with_null:
        return (
            "<p class='note'>No permutation null: <code>featx classify --null-permutations K</code> refits each run's "
            "chosen configuration K times on labels permuted between patients and tests the real test AUC against "
            "those null AUCs. See docs/validation.md.</p>"
        )
    head = ("run", "test AUC", "null AUCs: mean ± sd (max)", "K", "permutation p", "normal approx. p", "verdict")
    rows = []
    for run in with_null:
        null = run["null"]
        verdict = null.get("distinguishable")
        verdict_text = (
            ("beats chance" if verdict else "<b class='bad'>⚠ not distinguishable from chance</b>")
            if verdict is not None
            else "–"
        )
        cells = (
            _e(run["run_id"]),
            _e(_auc_text((run.get("test") or {}).get("auc"))),
            f"{_fmt(null.get('mean'))} ± {_fmt(null.get('sd'))} ({_fmt(null.get('max'))})",
            str(null.get("permutations")),
            f"{_fmt(null.get('p_value'), 3)} (≥ {_fmt(null.get('p_min'), 3)})",
            _fmt(null.get("p_normal"), 3),
            verdict_text,
        )
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    flagged = [run["run_id"] for run in with_null if (run["null"].get("distinguishable") is False)]
    warning = (
        f"<div class='warn'>⚠ {len(flagged)} run(s) not distinguishable from chance: {_e(', '.join(flagged))}.</div>"
        if flagged
        else ""
    )
    note = (
        "<p class='note'>Labels permuted between patients (each patient's images take another patient's label), "
        "the run's chosen configuration refitted and scored on the real test rows. p = (1 + #null ≥ real) / (K + 1) "
        "cannot fall below 1 / (K + 1); with fewer than 19 permutations the verdict uses a normal approximation of the "
        "null and asks the real AUC to beat every null AUC. Only the chosen parameters are refitted (no search per "
        "permutation), which makes the null slightly optimistic about chance.</p>"
    )
    return (
        warning
        + note
        + "<table><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def leaderboard_columns(run: dict) -> dict:
    """The leaderboard's validation columns of one run: its first external set's AUC and the null's p-value."""
    sections: dict = run.get("external") or {}
    name = next(iter(sections), None)
    section: dict = sections.get(name) or {} if name is not None else {}
    auc = section.get("auc") or {}
    null = run.get("null") or {}

    def number(value):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return {
        "external_set": name,
        "external_auc": number(auc.get("value")),
        "external_auc_ci_low": number(auc.get("ci_low")),
        "external_auc_ci_high": number(auc.get("ci_high")),
        "null_p_value": number(null.get("p_value")),
    }
