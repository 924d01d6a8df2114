"""The HTML report: one self-contained file (plots embedded as base64 PNG, inline CSS).

Sections: a random-weights banner when any run used random-init weights, the
dataset summary with leakage findings, the leaderboard and the backbone x
classifier heatmap of test AUC, ROC curves per backbone, confusion matrices at
each run's chosen threshold, calibration curves, subgroup AUCs as forest plots
(when classify ran with --subgroups), and provenance. Every plot is
also written to results/plots/*.png. Plots use matplotlib's Figure API directly
(Agg canvas), never pyplot, so no global backend state is touched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from featx import __version__
from featx.errors import CacheError
from featx.extract import store
from featx.extract.backbones import RANDOM_BANNER
from featx.files import atomic_write_bytes
from featx.results import records
from featx.results.leaderboard import leaderboard_rows

PLOT_PREFIXES = ("heatmap_", "roc_", "confusion_", "calibration_", "forest_")
SECTIONS = (
    ("dataset", "Dataset"),
    ("leaderboard", "Leaderboard"),
    ("heatmap", "Test AUC heatmap"),
    ("roc", "ROC curves"),
    ("confusion", "Confusion matrices"),
    ("calibration", "Calibration"),
    ("subgroups", "Subgroups"),
    ("provenance", "Provenance"),
)
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


# ---------------------------------------------------------------- loading runs


def _leaderboard_order(runs: list[dict]) -> tuple[list[dict], dict[str, dict]]:
    """Runs in leaderboard order (best first) and featx.results.leaderboard's row per run_id."""
    rows = leaderboard_rows(runs)
    by_run_id = {run["run_id"]: run for run in runs}
    return [by_run_id[row["run_id"]] for row in rows], {row["run_id"]: row for row in rows}


# ---------------------------------------------------------------- small helpers


def _num(value, default=float("nan")) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _fmt(value, digits=3) -> str:
    number = _num(value)
    return "n/a" if math.isnan(number) else f"{number:.{digits}f}"


def _auc(run: dict) -> dict:
    auc = (run.get("test") or {}).get("auc") or {}
    return auc if isinstance(auc, dict) else {"value": auc}


def _auc_text(auc: dict) -> str:
    text = _fmt(auc.get("value"))
    if not math.isnan(_num(auc.get("ci_low"))):
        text += f" [{_fmt(auc.get('ci_low'))}–{_fmt(auc.get('ci_high'))}]"
    return text


def _is_random(run: dict) -> bool:
    return bool(run.get("random_weights")) or run.get("weights") == "random"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "plot"


def _e(value) -> str:
    return html.escape(str(value))


def _predictions(run: dict) -> tuple[np.ndarray, np.ndarray] | None:
    predictions = run.get("test_predictions") or {}
    try:
        y_true = np.asarray(predictions["y_true"])
        score = np.asarray(predictions["score"], dtype=float)
    except (KeyError, TypeError, ValueError):
        return None
    if len(y_true) == 0 or len(y_true) != len(score):
        return None
    return y_true, score


def _one_vs_rest(run: dict, y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) 0/1 truth and (N, K) scores for a multiclass or multilabel run."""
    if y_true.ndim == 2:
        return y_true.astype(int), score
    k = score.shape[1]
    return (y_true.astype(int)[:, None] == np.arange(k)[None, :]).astype(int), score


@dataclass
class _Plot:
    name: str  # file name under results/plots
    title: str
    png: bytes


# ---------------------------------------------------------------- plotting


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _render(figure, random_weights: bool) -> bytes:
    if random_weights:
        figure.suptitle(
            "RANDOM-INIT WEIGHTS\npipeline check, not ImageNet features",
            color="#b00020",
            fontweight="bold",
            fontsize=10,
        )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _group_key(run: dict, several_poolings: bool) -> str:
    backbone = str(run.get("backbone", "?"))
    return f"{backbone}/{run.get('pooling', '?')}" if several_poolings else backbone


def _heatmap(groups: OrderedDict[str, list[dict]], classifiers: list[str], random_weights: bool) -> _Plot:
    values = np.full((len(groups), len(classifiers)), np.nan)
    labels = [["" for _ in classifiers] for _ in groups]
    for i, runs in enumerate(groups.values()):
        for run in runs:
            j = classifiers.index(run["classifier"])
            auc = _auc(run)
            values[i, j] = _num(auc.get("value"))
            ci = ""
            if not math.isnan(_num(auc.get("ci_low"))):
                ci = f"\n[{_fmt(auc.get('ci_low'), 2)}–{_fmt(auc.get('ci_high'), 2)}]"
            labels[i][j] = f"{_fmt(auc.get('value'))}{ci}"
    figure = _figure(1.6 + 1.5 * len(classifiers), 1.2 + 0.62 * len(groups))
    ax = figure.subplots()
    finite = values[np.isfinite(values)]
    low = min(0.5, float(finite.min())) if finite.size else 0.5
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=1.0, aspect="auto")
    ax.set_facecolor("#dddddd")
    ax.set_xticks(range(len(classifiers)), classifiers)
    ax.set_yticks(range(len(groups)), list(groups))
    for i in range(len(groups)):
        for j in range(len(classifiers)):
            if np.isfinite(values[i, j]):
                light = values[i, j] < low + 0.6 * (1.0 - low)
                ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=8, color="white" if light else "black")
            else:
                ax.text(j, i, "—", ha="center", va="center", color="#555555")
    figure.colorbar(image, ax=ax, label="test ROC AUC")
    ax.set_title("Test ROC AUC (95% CI)")
    return _Plot("heatmap_test_auc.png", "Backbone × classifier test AUC", _render(figure, random_weights))


def _roc_lines(run: dict):
    """(label, fpr, tpr, operating point or None) for a run; non-binary runs give their macro-average curve."""
    from sklearn.metrics import roc_curve

    data = _predictions(run)
    if data is None:
        return None
    y_true, score = data
    auc_text = _auc_text(_auc(run))
    if run.get("task", "binary") == "binary" and score.ndim == 1:
        if len(np.unique(y_true)) < 2:
            return None
        fpr, tpr, _ = roc_curve(y_true.astype(int), score)
        point = None
        threshold = _num((run.get("threshold") or {}).get("value"))
        if not math.isnan(threshold):
            predicted = score >= threshold
            positives, negatives = y_true == 1, y_true == 0
            point = (float(predicted[negatives].mean()), float(predicted[positives].mean()))
        return f"{run.get('classifier')}: AUC {auc_text}", fpr, tpr, point
    truth, scores = _one_vs_rest(run, y_true, score)
    grid = np.linspace(0.0, 1.0, 201)
    curves = []
    for k in range(truth.shape[1]):
        if 0 < truth[:, k].sum() < len(truth):
            fpr, tpr, _ = roc_curve(truth[:, k], scores[:, k])
            curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        return None
    return f"{run.get('classifier')}: macro AUC {auc_text}", grid, np.mean(curves, axis=0), None


def _roc_plot(group: str, runs: list[dict], random_weights: bool) -> _Plot | None:
    lines = [(run, _roc_lines(run)) for run in runs]
    lines = [(run, line) for run, line in lines if line is not None]
    if not lines:
        return None
    figure = _figure(5.6, 5.0)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1)
    for index, (_run, (label, fpr, tpr, point)) in enumerate(lines):
        color = COLORS[index % len(COLORS)]
        ax.plot(fpr, tpr, color=color, linewidth=1.8, label=label)
        if point is not None:
            ax.plot(*point, marker="o", color=color, markersize=6, markeredgecolor="black")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 − specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"ROC — {group} (dots: chosen threshold)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_aspect("equal")
    return _Plot(f"roc_{_safe_name(group)}.png", f"ROC curves — {group}", _render(figure, random_weights))


def _per_class_roc_plot(run: dict, random_weights: bool) -> _Plot | None:
    from sklearn.metrics import roc_curve

    data = _predictions(run)
    if data is None or data[1].ndim != 2:
        return None
    truth, scores = _one_vs_rest(run, *data)
    classes = list(run.get("classes") or range(truth.shape[1]))
    per_class = (run.get("test") or {}).get("per_class_auc") or {}
    figure = _figure(6.4, 5.4)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1)
    for k, name in enumerate(classes):
        if not 0 < truth[:, k].sum() < len(truth):
            continue
        fpr, tpr, _ = roc_curve(truth[:, k], scores[:, k])
        auc = per_class.get(str(name)) or {}
        ax.plot(fpr, tpr, color=COLORS[k % len(COLORS)], linewidth=1.5, label=f"{name}: AUC {_auc_text(auc)}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"Per-class ROC (one vs rest) — best run {run.get('run_id')}", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_aspect("equal")
    return _Plot(
        f"roc_per_class_{_safe_name(str(run.get('run_id')))}.png",
        f"Per-class ROC — {run.get('run_id')}",
        _render(figure, random_weights),
    )


def _confusion_plot(group: str, runs: list[dict], random_weights: bool) -> _Plot | None:
    panels = []
    for run in runs:
        matrix = np.asarray((run.get("test") or {}).get("confusion_matrix") or [], dtype=float)
        if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] and matrix.shape[0] >= 2:
            panels.append((run, matrix))
    if not panels:
        return None
    figure = _figure(3.3 * len(panels), 3.4)
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for ax, (run, matrix) in zip(axes, panels):
        classes = [str(c) for c in (run.get("classes") or range(len(matrix)))]
        rows = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(matrix)):
            for j in range(len(matrix)):
                ax.text(
                    j,
                    i,
                    f"{int(matrix[i, j])}\n{share[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 2 else 0, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        threshold = (run.get("threshold") or {}).get("value")
        title = str(run.get("classifier"))
        if threshold is not None:
            title += f" @ {_fmt(threshold)} ({(run.get('threshold') or {}).get('rule', '')})"
        ax.set_title(title, fontsize=9)
    return _Plot(f"confusion_{_safe_name(group)}.png", f"Confusion matrices — {group}", _render(figure, random_weights))


def _calibration_plot(group: str, runs: list[dict], random_weights: bool) -> _Plot | None:
    from sklearn.calibration import calibration_curve

    lines = []
    for run in runs:
        data = _predictions(run)
        if data is None:
            continue
        y_true, score = data
        if score.ndim == 2:  # one-vs-rest pooled over classes: a micro-averaged reliability diagram
            truth, scores = _one_vs_rest(run, y_true, score)
            y_true, score, kind = truth.ravel(), scores.ravel(), " (one-vs-rest, pooled)"
        else:
            kind = ""
        if len(np.unique(y_true)) < 2:
            continue
        score = np.clip(score, 0.0, 1.0)
        # equal-count bins: with a few hundred test rows, equal-width bins at the extremes hold a handful of images
        n_bins = int(np.clip(len(score) // 25, 3, 10))
        prob_true, prob_pred = calibration_curve(y_true.astype(int), score, n_bins=n_bins, strategy="quantile")
        brier = float(np.mean((score - y_true.astype(float)) ** 2))
        lines.append((f"{run.get('classifier')}{kind}: Brier {brier:.3f}", prob_pred, prob_true))
    if not lines:
        return None
    figure = _figure(5.6, 5.0)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, label="perfectly calibrated")
    for index, (label, x, y) in enumerate(lines):
        ax.plot(x, y, marker="o", markersize=4, color=COLORS[index % len(COLORS)], linewidth=1.6, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("mean predicted probability (equal-count bins)")
    ax.set_ylabel("observed fraction positive")
    ax.set_title(f"Calibration — {group}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_aspect("equal")
    return _Plot(f"calibration_{_safe_name(group)}.png", f"Calibration — {group}", _render(figure, random_weights))


def _forest_plot(run: dict, random_weights: bool) -> _Plot | None:
    """Subgroup test AUCs with their DeLong CIs, one row per subgroup, grouped by attribute; dashed: the overall AUC."""
    attributes = ((run.get("subgroups") or {}).get("attributes") or {}).items()
    rows: list[tuple[str, dict | None]] = []  # (label, auc) ; auc None = an attribute heading
    for attribute, result in attributes:
        gap = result.get("largest_gap")
        heading = attribute
        if gap:
            heading += f"  (gap {_fmt(gap.get('difference'))}, p adj. {_fmt(gap.get('p_adjusted'))})"
        rows.append((heading, None))
        for group in result.get("groups") or []:
            label = f"{group['name']}  n={group['n']} ({group['n_positive']}+/{group['n_negative']}−)"
            rows.append((label, group.get("auc") or {}))
        for group in result.get("too_small") or []:
            rows.append(
                (f"{group['name']}  n={group['n']} ({group['n_positive']}+/{group['n_negative']}−) too small", {})
            )
    if not any(auc for _, auc in rows):
        return None
    figure = _figure(7.2, 1.0 + 0.3 * len(rows))
    ax = figure.subplots()
    overall = _num(_auc(run).get("value"))
    if not math.isnan(overall):
        ax.axvline(overall, color="#999999", linestyle="--", linewidth=1, label=f"all test rows: {overall:.3f}")
    lows = [_num(auc.get("ci_low")) for _, auc in rows if auc]
    for y, (_label, auc) in enumerate(rows):
        if auc:
            value, low, high = _num(auc.get("value")), _num(auc.get("ci_low")), _num(auc.get("ci_high"))
            ax.plot([low, high], [y, y], color=COLORS[0], linewidth=2)
            ax.plot([value], [y], marker="s", color=COLORS[0], markersize=6)
            ax.text(
                1.005,
                y,
                f"{value:.3f} [{low:.3f}–{high:.3f}]",
                va="center",
                fontsize=8,
                transform=ax.get_yaxis_transform(),
            )
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    for tick, (_, auc) in zip(ax.get_yticklabels(), rows):
        if auc is None:
            tick.set_fontweight("bold")
        elif not auc:
            tick.set_color("#888888")
    ax.invert_yaxis()
    finite_lows = [low for low in lows if not math.isnan(low)]
    ax.set_xlim(min([0.5, *finite_lows]) - 0.02, 1.0)
    ax.set_xlabel("test ROC AUC (DeLong 95% CI)")
    ax.set_title(f"Subgroups — {run.get('run_id')}", fontsize=10)
    if not math.isnan(overall):
        ax.legend(loc="lower left", fontsize=8)
    return _Plot(
        f"forest_{_safe_name(str(run.get('run_id')))}.png",
        f"Subgroup AUCs — {run.get('run_id')}",
        _render(figure, random_weights),
    )


def _gap_text(gap: dict | None) -> str:
    if not gap:
        return "— (fewer than two subgroups large enough)"
    verdict = "significant" if gap.get("significant") else "not significant"
    return (
        f"{gap.get('high')} − {gap.get('low')} = {_fmt(gap.get('difference'))}; p = {_fmt(gap.get('p_value'))}, "
        f"Bonferroni over {gap.get('n_pairs')} pair(s) {_fmt(gap.get('p_adjusted'))}: {verdict}"
    )


def _subgroup_section(ranked: list[dict], plots: list[_Plot]) -> str:
    runs = [run for run in ranked if run.get("subgroups")]
    if not runs:
        return (
            "<p class='note'>No subgroup analysis in these runs; run <code>featx classify --subgroups "
            "sex,age_band,view</code> on features whose manifest has those metadata columns.</p>"
        )
    settings = runs[0]["subgroups"]
    rows = []
    for run in runs:
        for attribute, result in (run["subgroups"].get("attributes") or {}).items():
            groups = ", ".join(f"{g['name']} {_auc_text(g.get('auc') or {})}" for g in result.get("groups") or [])
            small = ", ".join(
                f"{g['name']} ({g['n_positive']}+/{g['n_negative']}−)" for g in result.get("too_small") or []
            )
            missing = result.get("n_missing") or 0
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{cell}</td>"
                    for cell in (
                        _e(run.get("run_id")),
                        _e(attribute),
                        _e(groups or "—"),
                        _e(small or "—"),
                        _e(missing),
                        _e(_gap_text(result.get("largest_gap"))),
                    )
                )
                + "</tr>"
            )
    head = ("run", "attribute", "subgroups: test AUC [95% CI]", "too small", "no value", "largest gap")
    note = (
        f"<p class='note'>A subgroup gets its AUC when it holds at least {_e(settings.get('min_positives'))} positive "
        f"and {_e(settings.get('min_negatives'))} negative test images; age bands from the edges "
        f"{_e(settings.get('age_bands'))}. Largest gap: {_e(settings.get('test'))} (α = {_e(settings.get('alpha'))}). "
        "Subgroups split images, not patients, and DeLong treats images as independent: with several images per "
        "patient the intervals are too narrow, small subgroups most of all. The forest plots show each backbone's "
        "best run.</p>"
    )
    return (
        note
        + _plots_html(plots, "")
        + "<table class='small'><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def print_subgroups(run: dict, console) -> None:
    """The subgroup AUCs of one run in the terminal (what the report's forest plot shows)."""
    from rich.table import Table

    attributes = (run.get("subgroups") or {}).get("attributes") or {}
    if not attributes:
        return
    table = Table(title=f"Subgroup test AUCs — {run.get('run_id')}")
    for column in ("attribute", "subgroup", "n (+/−)", "AUC [95% CI]"):
        table.add_column(column)
    for attribute, result in attributes.items():
        for group in result.get("groups") or []:
            table.add_row(
                attribute,
                str(group["name"]),
                f"{group['n']} ({group['n_positive']}/{group['n_negative']})",
                _auc_text(group.get("auc") or {}),
            )
        for group in result.get("too_small") or []:
            table.add_row(
                attribute,
                str(group["name"]),
                f"{group['n']} ({group['n_positive']}/{group['n_negative']})",
                "[dim]too small[/dim]",
            )
    console.print(table)
    for attribute, result in attributes.items():
        console.print(f"{attribute}: largest gap {_gap_text(result.get('largest_gap'))}", soft_wrap=True)


# ---------------------------------------------------------------- dataset and leakage


def _class_counts(counts, classes) -> dict[str, int]:
    if isinstance(counts, dict):
        return {str(k): int(v) for k, v in counts.items()}
    if isinstance(counts, (list, tuple)):
        return {str(c): int(v) for c, v in zip(classes, counts)}
    return {}


def _dataset_section(runs: list[dict], findings: list[str]) -> str:
    summaries: OrderedDict[str, tuple[dict, list[str]]] = OrderedDict()
    for run in runs:
        data = run.get("data") or {}
        key = json.dumps([run.get("manifest_sha256"), data], sort_keys=True, default=str)
        summaries.setdefault(key, (run, []))[1].append(str(run.get("backbone")))
    parts = []
    for run, backbones in summaries.values():
        data = run.get("data") or {}
        classes = [str(c) for c in (run.get("classes") or [])]
        counts = data.get("class_counts") or {}
        positive = run.get("positive_class")
        header = "".join(f"<th>{_e(c)}</th>" for c in classes)
        rows = []
        for split, n_images, n_patients in (
            ("train", data.get("n_train"), data.get("n_train_patients")),
            ("test", data.get("n_test"), data.get("n_test_patients")),
        ):
            split_counts = _class_counts(counts.get(split), classes)
            cells = "".join(f"<td>{split_counts.get(c, '')}</td>" for c in classes)
            total = sum(split_counts.values())
            share = ""
            if positive is not None and total:
                share = f"{split_counts.get(str(positive), 0) / total:.1%}"
            rows.append(
                f"<tr><td>{split}</td><td>{_e(n_images)}</td><td>{_e(n_patients)}</td>{cells}<td>{share}</td></tr>"
            )
        source = data.get("test_source")
        source_text = {
            "manifest": "the test split comes from the manifest",
            "held_out_patients": "the manifest had no test rows: a patient-grouped, stratified share of the train "
            "patients was held out as test",
        }.get(str(source), f"test source: {source}")
        dropped = data.get("n_failed_images_dropped")
        extra = f"; {dropped} unreadable image(s) dropped" if dropped else ""
        multilabel = " (a multi-label image counts once per label)" if run.get("task") == "multilabel" else ""
        parts.append(
            f"<p>Manifest <code>{_e(str(run.get('manifest_sha256', ''))[:12])}</code> — task <b>{_e(run.get('task'))}</b>, "
            f"classes {_e(', '.join(classes))}"
            + (f", positive class <b>{_e(positive)}</b>" if positive is not None else "")
            + f"; {_e(source_text)}{_e(extra)}. Used by: {_e(', '.join(sorted(set(backbones))))}.</p>"
            f"<table><tr><th>split</th><th>images</th><th>patients</th>{header}"
            f"<th>{'positive share' if positive is not None else ''}</th></tr>{''.join(rows)}</table>"
            f"<p class='note'>Class counts per split{_e(multilabel)}.</p>"
        )
    leak = "".join(f"<li>{_e(f)}</li>" for f in findings)
    parts.append(f"<h3>Leakage and data checks</h3><ul>{leak}</ul>")
    return "".join(parts)


def _feature_file_findings(runs: list[dict], results_dir: Path) -> list[str]:
    """Patient overlap and identical image bytes between train(+val) and test, from each run's cache rows."""
    findings = []
    seen = set()
    for run in runs:
        name = run.get("feature_file")
        if not name or name in seen:
            continue
        seen.add(name)
        path = Path(name)
        candidates = [path] if path.is_absolute() else [path, results_dir / path, results_dir.parent / path]
        file = next((c for c in candidates if c.is_file()), None)
        if file is None:
            findings.append(
                f"{name}: feature file not found here, patient leakage not re-checked "
                "(run `featx manifest check MANIFEST --data-root DIR`)."
            )
            continue
        try:
            cache_rows = store.read_rows(file)
        except CacheError as error:
            findings.append(f"{name}: could not read split/patient ids ({error}).")
            continue
        splits, patients = cache_rows.split.astype(str), cache_rows.patient_id.astype(str)
        test_patients = set(patients[splits == "test"])
        other_patients = set(patients[splits != "test"])
        shared = sorted(test_patients & other_patients)
        if (run.get("data") or {}).get("test_source") == "held_out_patients" and not test_patients:
            findings.append(
                f"{name}: no test rows in the cache; classify held out whole patients, so no patient "
                f"sits on both sides ({len(other_patients)} patients)."
            )
        elif shared:
            findings.append(
                f"{name}: LEAKAGE — {len(shared)} patient(s) appear in both test and train/val "
                f"(e.g. {', '.join(shared[:5])}); test AUC is optimistic."
            )
        else:
            findings.append(
                f"{name}: no patient appears in both test ({len(test_patients)} patients) and "
                f"train/val ({len(other_patients)} patients)."
            )
        findings.append(_identical_images_finding(name, cache_rows))
    return findings


def _identical_images_finding(name: str, cache_rows: store.CacheRows) -> str:
    """Test images whose file bytes (sha256 recorded by extract) equal a train/val image's, whatever their patient."""
    digests, splits = cache_rows.image_sha256.astype(str), cache_rows.split.astype(str)
    known = (digests != "") & cache_rows.ok  # failed images are left out of every run
    in_test, in_other = known & (splits == "test"), known & (splits != "test")
    other = dict(zip(digests[in_other], cache_rows.ids[in_other]))
    pairs = [
        (path, other[digest]) for digest, path in zip(digests[in_test], cache_rows.ids[in_test]) if digest in other
    ]
    if not pairs:
        return f"{name}: no test image has the same bytes as a train/val image (sha256 of {int(known.sum())} files)."
    examples = "; ".join(f"{test} = {train}" for test, train in pairs[:3])
    return (
        f"{name}: LEAKAGE — {len(pairs)} test image(s) have the same bytes (sha256) as a train/val image "
        f"(e.g. {examples}); test AUC is optimistic."
    )


def _manifest_findings(manifest, data_root) -> list[str]:
    from featx.data.manifest import check_manifest

    report = check_manifest(manifest, data_root if data_root is not None else Path(manifest).parent)
    if report.ok:
        return [
            f"manifest check of {report.manifest}: {report.n_rows} rows, no problems found "
            "(no missing files, duplicates or patient leakage)."
        ]
    return [f"manifest check of {report.manifest}: {finding.message}" for finding in report.findings]


# ---------------------------------------------------------------- tables


def _leaderboard_table(ranked: list[dict], rows_by_id: dict[str, dict]) -> str:
    head = (
        "#",
        "backbone",
        "pooling",
        "classifier",
        "weights",
        "test AUC [95% CI]",
        "CV AUC",
        "sens",
        "spec",
        "threshold",
        "n test",
        "≈ best",
    )
    lines = []
    for rank, run in enumerate(ranked, 1):
        test = run.get("test") or {}
        threshold = run.get("threshold") or {}
        weights = str(run.get("weights", ""))
        weights_cell = f"<span class='bad'>{_e(weights)}</span>" if _is_random(run) else _e(weights)
        flag = (rows_by_id.get(run["run_id"]) or {}).get("not_worse_than_best")
        flag_text = "" if flag is None else ("yes" if flag else "no")
        cv = f"{_fmt(run.get('cv_auc_mean'))} ± {_fmt(run.get('cv_auc_std'))}"
        lines.append(
            "<tr>"
            + "".join(
                f"<td>{cell}</td>"
                for cell in (
                    rank,
                    _e(run.get("backbone")),
                    _e(run.get("pooling")),
                    _e(run.get("classifier")),
                    weights_cell,
                    f"<b>{_e(_auc_text(_auc(run)))}</b>",
                    _e(cv),
                    _fmt(test.get("sensitivity")),
                    _fmt(test.get("specificity")),
                    _fmt(threshold.get("value")) if threshold else "—",
                    _e((run.get("data") or {}).get("n_test", "")),
                    flag_text,
                )
            )
            + "</tr>"
        )
    note = (
        "<p class='note'>Sorted by test ROC AUC with DeLong 95% confidence intervals. CV AUC: patient-grouped "
        "cross-validation on train (mean ± sd over folds, best grid point). Sensitivity and specificity are at the "
        "threshold chosen on out-of-fold predictions."
        + (" “≈ best”: not significantly worse than the top run (paired DeLong test)." if rows_by_id else "")
        + "</p>"
    )
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(lines) + "</table>" + note


def _provenance_section(ranked: list[dict]) -> str:
    versions: OrderedDict[str, set] = OrderedDict()
    for run in ranked:
        for package, version in (run.get("versions") or {}).items():
            versions.setdefault(package, set()).add(str(version))
    version_rows = "".join(
        f"<tr><td>{_e(p)}</td><td>{_e(', '.join(sorted(v)))}"
        + (" <span class='bad'>(differs between runs)</span>" if len(v) > 1 else "")
        + "</td></tr>"
        for p, v in versions.items()
    )
    run_rows = []
    for run in ranked:
        config = run.get("config") or {}
        weights = str(run.get("weights", ""))
        if _is_random(run):
            weights = f"random (seed {run.get('weights_seed')})"
        timings = run.get("timings") or {}
        run_rows.append(
            "<tr>"
            + "".join(
                f"<td>{cell}</td>"
                for cell in (
                    _e(run.get("run_id")),
                    _e(weights),
                    _e(run.get("image_size")),
                    _e(run.get("resize_mode")),
                    f"<code class='hash'>{_e(str(run.get('feature_sha256', ''))[:12])}</code>",
                    f"<code class='hash'>{_e(str(run.get('manifest_sha256', ''))[:12])}</code>",
                    _e(", ".join(f"{k}={v}" for k, v in config.items())),
                    f"<code>{_e(json.dumps(run.get('best_params'), default=str))}</code>",
                    _fmt(timings.get("total_s"), 1),
                    _e(run.get("created_utc", "")),
                )
            )
            + "</tr>"
        )
    head = (
        "run",
        "weights",
        "image size",
        "resize",
        "features sha256",
        "manifest sha256",
        "config",
        "best params",
        "time (s)",
        "created (UTC)",
    )
    return (
        "<h3>Software versions</h3><table><tr><th>package</th><th>version</th></tr>" + version_rows + "</table>"
        "<h3>Runs</h3><table class='small'><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(run_rows)
        + "</table>"
        "<p class='note'>Every number above is traceable to its run JSON in <code>runs/</code> "
        "(grid, CV results, out-of-fold threshold, test predictions) and its model bundle in <code>models/</code>.</p>"
    )


CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0 auto;max-width:1240px;padding:18px 28px;
color:#222;line-height:1.45}
h1{margin-bottom:2px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:34px}
.meta{color:#666;font-size:13px}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:14px 18px;border-radius:6px;font-size:17px;margin:14px 0}
.warn{background:#fff4ce;border:1px solid #e0c050;padding:10px 14px;border-radius:6px;margin:10px 0}
table{border-collapse:collapse;margin:8px 0 4px 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
table.small{font-size:12px} code{font-size:12px;word-break:break-all} code.hash{white-space:nowrap;word-break:normal}
.note{color:#555;font-size:13px;margin-top:2px}
.bad{color:#b00020;font-weight:bold}
.plots{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0}
figure img{max-width:100%;border:1px solid #e4e4e4}
figcaption{font-size:12px;color:#555}
nav a{margin-right:14px}
"""


def _img(plot: _Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (
        f"<figure><img alt='{_e(plot.title)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{_e(plot.title)} — plots/{_e(plot.name)}</figcaption></figure>"
    )


def _plots_html(plots: list[_Plot], empty: str) -> str:
    if not plots:
        return f"<p class='note'>{_e(empty)}</p>"
    return "<div class='plots'>" + "".join(_img(p) for p in plots) + "</div>"


# ---------------------------------------------------------------- the report


def write_report(results_dir, out=None, *, manifest=None, data_root=None) -> Path:
    """Write the self-contained HTML report (default results_dir/report.html) and results_dir/plots/*.png.

    `manifest` (and its `data_root`) are optional: when given, `featx manifest check`'s
    findings (missing files, duplicates, patient leakage) join the dataset section.
    """
    results_dir = Path(results_dir)
    runs = records.load_runs(results_dir)
    out = Path(out) if out is not None else results_dir / "report.html"
    ranked, rows_by_id = _leaderboard_order(runs)
    random_weights = any(_is_random(run) for run in runs)

    several_poolings = len({run.get("pooling") for run in runs}) > 1
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for run in ranked:
        groups.setdefault(_group_key(run, several_poolings), []).append(run)
    classifier_order: list[str] = []
    for run in ranked:
        if run["classifier"] not in classifier_order:
            classifier_order.append(run["classifier"])
    for key in groups:
        groups[key].sort(key=lambda r: classifier_order.index(r["classifier"]))

    heatmap = _heatmap(groups, classifier_order, random_weights)
    roc = [p for g, rs in groups.items() if (p := _roc_plot(g, rs, random_weights)) is not None]
    best = ranked[0]
    if best.get("task", "binary") != "binary":
        per_class = _per_class_roc_plot(best, random_weights)
        if per_class is not None:
            roc.insert(0, per_class)
    confusion = [p for g, rs in groups.items() if (p := _confusion_plot(g, rs, random_weights)) is not None]
    calibration = [p for g, rs in groups.items() if (p := _calibration_plot(g, rs, random_weights)) is not None]
    best_of_group: OrderedDict[str, dict] = OrderedDict()
    for run in ranked:
        if run.get("subgroups"):
            best_of_group.setdefault(_group_key(run, several_poolings), run)
    forest = [p for run in best_of_group.values() if (p := _forest_plot(run, random_weights)) is not None]
    plots = [heatmap, *roc, *confusion, *calibration, *forest]

    plots_dir = results_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        if old.name.startswith(PLOT_PREFIXES):
            old.unlink()
    for plot in plots:
        (plots_dir / plot.name).write_bytes(plot.png)

    findings = _feature_file_findings(ranked, results_dir)
    if manifest is not None:
        findings += _manifest_findings(manifest, data_root)
    if not findings:
        findings = ["No feature file or manifest available to re-check patient leakage."]

    quick = any((run.get("config") or {}).get("quick") for run in runs)
    banner = f"<div class='banner'>⚠ {_e(RANDOM_BANNER)}</div>" if random_weights else ""
    if quick:
        banner += (
            "<div class='warn'>Some runs used the quick grid (<code>--quick</code>): a smoke-test setting, "
            "not for reporting.</div>"
        )
    tasks = sorted({str(run.get("task")) for run in runs})
    nav = "".join(f"<a href='#{key}'>{_e(title)}</a>" for key, title in SECTIONS)
    best_line = (
        f"Best: <b>{_e(best.get('run_id'))}</b>, test AUC {_e(_auc_text(_auc(best)))} "
        f"({len(runs)} runs, task {_e(', '.join(tasks))})."
    )
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>featx report</h1><p class='meta'>{_e(results_dir)} · generated {created} by featx {_e(__version__)}</p>",
        banner,
        f"<p>{best_line}</p><nav>{nav}</nav>",
        f"<h2 id='dataset'>Dataset</h2>{_dataset_section(ranked, findings)}",
        f"<h2 id='leaderboard'>Leaderboard</h2>{_leaderboard_table(ranked, rows_by_id)}",
        f"<h2 id='heatmap'>Test AUC heatmap</h2>{_plots_html([heatmap], '')}",
        "<h2 id='roc'>ROC curves</h2><p class='note'>One panel per backbone, one line per classifier; legend: test "
        "AUC with its 95% CI; the dot marks the threshold chosen on out-of-fold predictions.</p>"
        + _plots_html(roc, "No test predictions in the run files."),
        "<h2 id='confusion'>Confusion matrices</h2><p class='note'>Test split at each run's chosen threshold; "
        "counts and row percentages.</p>" + _plots_html(confusion, "No confusion matrices in the run files."),
        "<h2 id='calibration'>Calibration</h2><p class='note'>Reliability diagrams of the test probabilities "
        "(up to 10 equal-count bins); Brier score in the legend.</p>"
        + _plots_html(calibration, "No test predictions in the run files."),
        f"<h2 id='subgroups'>Subgroups</h2>{_subgroup_section(ranked, forest)}",
        f"<h2 id='provenance'>Provenance</h2>{_provenance_section(ranked)}",
    ]
    document = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>featx report — {_e(results_dir.name)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    atomic_write_bytes(out, document.encode("utf-8"))
    return out


def report_command(results_dir, out, console) -> None:
    """`featx report`: write the HTML report and say where it and its plots are."""
    results_dir = Path(results_dir)
    path = write_report(results_dir, out)
    runs = records.load_runs(results_dir)
    if any(_is_random(run) for run in runs):
        console.print(f"[bold white on red] {RANDOM_BANNER} [/]")
    n_plots = sum(1 for p in (results_dir / "plots").glob("*.png") if p.name.startswith(PLOT_PREFIXES))
    console.print(f"Report: [bold]{path}[/] ({len(runs)} runs; {n_plots} plots also in {results_dir / 'plots'})")
