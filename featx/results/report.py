"""The HTML report: one self-contained file (plots embedded as base64 PNG, inline CSS).

Sections: a random-weights banner when any run used random-init weights, the
dataset summary with leakage findings, the leaderboard and the backbone x
classifier heatmap of test AUC, ROC curves per backbone, confusion matrices at
each run's chosen threshold, calibration curves, subgroup AUCs as forest plots
(when classify ran with --subgroups), and provenance. Runs are compared only
within their dataset (leaderboard.datasets: same manifest, same test rows): each
dataset gets its own table, heatmap and panels under its own heading, and a
warning says when a results folder holds several. Every plot is also written to
results/plots/*.png. Plots use matplotlib's Figure API directly (Agg canvas),
never pyplot, so no global backend state is touched; every text is drawn
literally (no mathtext), so a `$` in a class or file name is just a character.
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
from typing import Any, Literal

import numpy as np

from featx import __version__
from featx.errors import CacheError
from featx.extract import store
from featx.extract.backbones import PIXEL_FLOOR, PIXEL_SIZES, RANDOM_BANNER
from featx.files import atomic_write_bytes
from featx.results import records
from featx.results.leaderboard import (
    Dataset,
    datasets,
    features_name,
    format_auc,
    format_params,
    foundation_sentence,
    leaderboard_rows,
    pixel_floor_sentence,
    plural,
    several_datasets_warning,
)

PLOT_PREFIXES = (
    "heatmap_",
    "roc_",
    "confusion_",
    "calibration_",
    "forest_",
    "efficiency_",
    "near_duplicates_",
    "external_",
)
SECTIONS = (
    ("dataset", "Dataset"),
    ("leaderboard", "Leaderboard"),
    ("heatmap", "Test AUC heatmap"),
    ("roc", "ROC curves"),
    ("confusion", "Confusion matrices"),
    ("calibration", "Calibration"),
    ("subgroups", "Subgroups"),
    ("efficiency", "Data efficiency"),
    ("audits", "Audits"),
    ("external", "External validation"),  # issue 17: results/validation.py
    ("null", "Permutation null"),
    ("claim", "CLAIM checklist"),  # results/claim.py
    ("provenance", "Provenance"),
)
# Labels are data (class names, file names): drawn as typed, never parsed as mathtext or LaTeX.
LITERAL_TEXT: dict[Any, Any] = {"text.parse_math": False, "text.usetex": False}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")


# ---------------------------------------------------------------- loading runs


@dataclass
class _DatasetRuns:
    """One dataset's runs in leaderboard order; its plot files carry a suffix when the folder holds several."""

    dataset: Dataset
    runs: list[dict]

    @property
    def suffix(self) -> str:
        return f"_d{self.dataset.index}" if self.dataset.count > 1 else ""

    @property
    def tag(self) -> str:
        return f", dataset {self.dataset.index}" if self.dataset.count > 1 else ""


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


def _auc_text(auc: dict, sep: str = " ") -> str:
    text = format_auc(auc.get("value"), auc.get("ci_low"), auc.get("ci_high"), sep=sep)
    return "n/a" if text == "–" else text


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


def _figure(width: float, height: float, layout: Literal["constrained", "compressed"] = "constrained"):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


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


def _diagonal_figure(width: float = 5.6, height: float = 5.0, label: str | None = None):
    """(figure, axes) with the dashed y = x line: chance on a ROC plot, perfect calibration on a reliability diagram."""
    figure = _figure(width, height)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999999", linewidth=1, **({"label": label} if label else {}))
    return figure, ax


def _square_plot(
    figure,
    ax,
    file_name: str,
    caption: str,
    random_weights: bool,
    *,
    labels: tuple[str, str],
    title: str,
    legend: str,
    legend_size: int = 8,
    unit_limits: bool = True,
) -> _Plot:
    """The finished _Plot of a _diagonal_figure: axis labels, title, legend, equal aspect (and [0, 1] limits)."""
    if unit_limits:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title, fontsize=10)
    ax.legend(loc=legend, fontsize=legend_size)
    ax.set_aspect("equal")
    return _Plot(file_name, caption, _render(figure, random_weights))


def _group_key(run: dict, several_poolings: bool) -> str:
    features = features_name(run)
    return f"{features}/{run.get('pooling', '?')}" if several_poolings else features


def _heatmap_labels(groups: OrderedDict[str, list[dict]], classifiers: list[str]):
    """(values, cell texts) of the heatmap: each cell is format_auc's text with the CI on a second line."""
    values = np.full((len(groups), len(classifiers)), np.nan)
    labels = [["" for _ in classifiers] for _ in groups]
    for i, runs in enumerate(groups.values()):
        for run in runs:
            j = classifiers.index(run["classifier"])
            auc = _auc(run)
            values[i, j] = _num(auc.get("value"))
            labels[i][j] = _auc_text(auc, sep="\n")
    return values, labels


def _heatmap(groups: OrderedDict[str, list[dict]], classifiers: list[str], random_weights: bool, where) -> _Plot:
    values, labels = _heatmap_labels(groups, classifiers)
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
    ax.set_title(f"Test ROC AUC (95% CI){where.tag}")
    return _Plot(
        f"heatmap_test_auc{where.suffix}.png",
        f"Backbone × classifier test AUC{where.tag}",
        _render(figure, random_weights),
    )


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


def _roc_plot(group: str, runs: list[dict], random_weights: bool, where) -> _Plot | None:
    lines = [(run, _roc_lines(run)) for run in runs]
    lines = [(run, line) for run, line in lines if line is not None]
    if not lines:
        return None
    figure, ax = _diagonal_figure()
    for index, (_run, (label, fpr, tpr, point)) in enumerate(lines):
        color = COLORS[index % len(COLORS)]
        ax.plot(fpr, tpr, color=color, linewidth=1.8, label=label)
        if point is not None:
            ax.plot(*point, marker="o", color=color, markersize=6, markeredgecolor="black")
    return _square_plot(
        figure,
        ax,
        f"roc_{_safe_name(group)}{where.suffix}.png",
        f"ROC curves — {group}{where.tag}",
        random_weights,
        labels=("1 − specificity (false positive rate)", "sensitivity (true positive rate)"),
        title=f"ROC — {group}{where.tag} (dots: chosen threshold)",
        legend="lower right",
    )


def run_roc_png(run: dict) -> bytes | None:
    """One run's ROC curve alone as PNG bytes (the report's ROC plot; MLflow's roc.png artifact), None without
    test predictions to draw."""
    from types import SimpleNamespace

    import matplotlib

    with matplotlib.rc_context(LITERAL_TEXT):
        plot = _roc_plot(str(run.get("run_id")), [run], _is_random(run), SimpleNamespace(suffix="", tag=""))
    return None if plot is None else plot.png


def _per_class_roc_plot(run: dict, random_weights: bool) -> _Plot | None:
    from sklearn.metrics import roc_curve

    data = _predictions(run)
    if data is None or data[1].ndim != 2:
        return None
    truth, scores = _one_vs_rest(run, *data)
    classes = list(run.get("classes") or range(truth.shape[1]))
    per_class = (run.get("test") or {}).get("per_class_auc") or {}
    figure, ax = _diagonal_figure(6.4, 5.4)
    for k, name in enumerate(classes):
        if not 0 < truth[:, k].sum() < len(truth):
            continue
        fpr, tpr, _ = roc_curve(truth[:, k], scores[:, k])
        auc = per_class.get(str(name)) or {}
        ax.plot(fpr, tpr, color=COLORS[k % len(COLORS)], linewidth=1.5, label=f"{name}: AUC {_auc_text(auc)}")
    return _square_plot(
        figure,
        ax,
        f"roc_per_class_{_safe_name(str(run.get('run_id')))}.png",
        f"Per-class ROC — {run.get('run_id')}",
        random_weights,
        labels=("false positive rate", "true positive rate"),
        title=f"Per-class ROC (one vs rest) — best run {run.get('run_id')}",
        legend="lower right",
        legend_size=7,
        unit_limits=False,
    )


def _confusion_plot(group: str, runs: list[dict], random_weights: bool, where) -> _Plot | None:
    panels = []
    for run in runs:
        matrix = np.asarray((run.get("test") or {}).get("confusion_matrix") or [], dtype=float)
        if matrix.ndim == 2 and matrix.shape[0] == matrix.shape[1] and matrix.shape[0] >= 2:
            panels.append((run, matrix))
    if not panels:
        return None
    # "compressed" lays out fixed-aspect images; "constrained" left the x label below the figure's edge
    figure = _figure(3.3 * len(panels), 3.8, layout="compressed")
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
    return _Plot(
        f"confusion_{_safe_name(group)}{where.suffix}.png",
        f"Confusion matrices — {group}{where.tag}",
        _render(figure, random_weights),
    )


def _calibration_plot(group: str, runs: list[dict], random_weights: bool, where) -> _Plot | None:
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
    figure, ax = _diagonal_figure(label="perfectly calibrated")
    for index, (label, x, y) in enumerate(lines):
        ax.plot(x, y, marker="o", markersize=4, color=COLORS[index % len(COLORS)], linewidth=1.6, label=label)
    return _square_plot(
        figure,
        ax,
        f"calibration_{_safe_name(group)}{where.suffix}.png",
        f"Calibration — {group}{where.tag}",
        random_weights,
        labels=("mean predicted probability (equal-count bins)", "observed fraction positive"),
        title=f"Calibration — {group}{where.tag}",
        legend="upper left",
    )


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
                _auc_text(auc),
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
                _row(
                    _e(run.get("run_id")),
                    _e(attribute),
                    _e(groups or "—"),
                    _e(small or "—"),
                    _e(missing),
                    _e(_gap_text(result.get("largest_gap"))),
                )
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
    return note + _plots_html(plots, "") + _table(head, rows, "small")


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
            "held_out_patients": "the manifest had no test rows: a share of the train patients, each chosen by a "
            "seeded hash of its id, was held out as test",
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


FLOOR_POOLING = (
    "the raw-pixel floor pools nothing: its features are the grayscale image at "
    + " and ".join(f"{size}×{size}" for size in PIXEL_SIZES)
    + " pixels, flattened"
)


def _is_floor(run: dict) -> bool:
    """A floor run (raw pixels; the metadata floor): its features are not a backbone's pooled feature map."""
    return run.get("backbone") == PIXEL_FLOOR or run.get("backbone_group") == "floor"


def _pooling_cell(run: dict) -> str:
    """The pooling a leaderboard row names: “—” for a floor, whose stored pooling name ('avg') means nothing."""
    return f"<span title='{_e(FLOOR_POOLING)}'>—</span>" if _is_floor(run) else _e(run.get("pooling"))


def _params_html(params: dict | None) -> str:
    """Best params (format_params) that a narrow cell wraps only between parameters, never inside one."""
    text = format_params(params)
    return ", ".join(f"<span class='nowrap'>{_e(part)}</span>" for part in text.split(", "))


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
        "best params",
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
            _row(
                rank,
                _e(features_name(run)),
                _pooling_cell(run),
                _e(run.get("classifier")),
                weights_cell,
                f"<b class='nowrap'>{_e(_auc_text(_auc(run)))}</b>",
                f"<span class='nowrap'>{_e(cv)}</span>",
                _fmt(test.get("sensitivity")),
                _fmt(test.get("specificity")),
                _fmt(threshold.get("value")) if threshold else "—",
                _e((run.get("data") or {}).get("n_test", "")),
                flag_text,
                _params_html(run.get("best_params")),
            )
        )
    note = (
        "<p class='note'>Sorted by test ROC AUC with DeLong 95% confidence intervals, within this dataset only. "
        "CV AUC: patient-grouped "
        "cross-validation on train (mean ± sd over folds, best grid point). Sensitivity and specificity are at the "
        "threshold chosen on out-of-fold predictions."
        + (" “≈ best”: not significantly worse than this dataset's top run (paired DeLong test)." if rows_by_id else "")
        + (f" Pooling “—”: {_e(FLOOR_POOLING)}." if any(_is_floor(run) for run in ranked) else "")
        + "</p>"
    )
    return _table(head, lines) + note


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
    return (
        "<h3>Software versions</h3><table><tr><th>package</th><th>version</th></tr>" + version_rows + "</table>"
        "<h3>Runs</h3>"
        + _provenance_runs(ranked)
        + "<p class='note'>Every number above is traceable to its run JSON in <code>runs/</code> "
        "(grid, CV results, out-of-fold threshold, test predictions) and its model bundle in <code>models/</code>.</p>"
    )


def _settings_html(settings: dict) -> str:
    """'cv=5, seed=0, ...' that a narrow cell wraps only between settings, never inside one."""
    return ", ".join(f"<span class='nowrap'>{_e(key)}={_e(value)}</span>" for key, value in settings.items())


def _provenance_runs(ranked: list[dict]) -> str:
    """The runs' provenance table; what every run shares (a column with one value, a config key with one value)
    is said once above it instead of in every row."""
    columns: OrderedDict[str, list[str]] = OrderedDict(
        (name, [])
        for name in ("run", "weights", "image size", "resize", "features sha256", "manifest sha256", "config")
    )
    columns.update((name, []) for name in ("best params", "time (s)", "created (UTC)"))
    configs = [run.get("config") or {} for run in ranked]
    keys = list(OrderedDict.fromkeys(key for config in configs for key in config))
    shared_config = {
        key: configs[0][key]
        for key in keys
        if len(ranked) > 1 and all(key in config and config[key] == configs[0][key] for config in configs)
    }
    for run, config in zip(ranked, configs):
        weights = str(run.get("weights", ""))
        if _is_random(run):
            weights = f"random (seed {run.get('weights_seed')})"
        own = {key: value for key, value in config.items() if key not in shared_config}
        values = (
            _e(run.get("run_id")),
            f"<span class='nowrap'>{_e(weights)}</span>",
            _e(run.get("image_size")),
            _e(run.get("resize_mode")),
            f"<code class='hash'>{_e(str(run.get('feature_sha256', ''))[:12])}</code>",
            f"<code class='hash'>{_e(str(run.get('manifest_sha256', ''))[:12])}</code>",
            _settings_html(own) if own else "—",
            _params_html(run.get("best_params")),
            _fmt((run.get("timings") or {}).get("total_s"), 1),
            f"<span class='nowrap'>{_e(run.get('created_utc', ''))}</span>",
        )
        for column, value in zip(columns.values(), values):
            column.append(value)
    per_run = ("run", "best params", "time (s)", "created (UTC)")
    shared = [
        (name, values[0])
        for name, values in columns.items()
        if name not in per_run and name != "config" and len(ranked) > 1 and len(set(values)) == 1
    ]
    if shared_config:
        shared.append(("config", _settings_html(shared_config)))
    shared_names = {name for name, _ in shared if name != "config"}
    if all(value == "—" for value in columns["config"]):  # every key said once above: no config column
        shared_names.add("config")
    head = [name for name in columns if name not in shared_names]
    rows = [_row(*(columns[name][i] for name in head)) for i in range(len(ranked))]
    common = (
        "<p>Same for every run: " + "; ".join(f"<b>{_e(name)}</b> {value}" for name, value in shared) + ".</p>"
        if shared
        else ""
    )
    return common + _table(head, rows, "small")


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
.nowrap{white-space:nowrap} code.params{word-break:normal}
.note{color:#555;font-size:13px;margin-top:2px}
.bad{color:#b00020;font-weight:bold}
.floor{background:#eef4fb;border-left:4px solid #1f77b4;padding:6px 10px}
.plots{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0}
figure img{max-width:100%;border:1px solid #e4e4e4}
figcaption{font-size:12px;color:#555}
nav a{margin-right:14px}
"""


def _row(*cells) -> str:
    """One HTML table row of cells that are HTML already."""
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _table(head, rows, css: str = "") -> str:
    """An HTML table: the header cells `head` (HTML), then the `rows` (from _row)."""
    opening = f"<table class='{css}'>" if css else "<table>"
    return opening + "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"


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


# ---------------------------------------------------------------- beside the leaderboard: the floor and the split level


def _run_name(run: dict) -> str:
    return f"{features_name(run)}/{run.get('pooling')}/{run.get('classifier')}"


def _pixel_floor_line(runs: list[dict]) -> str:
    """The leaderboard's one sentence on what the best backbone run adds over the raw-pixel floor."""
    from featx.results.validation import metadata_floor_sentence

    metadata = metadata_floor_sentence(runs)
    css = "warn" if metadata and metadata.startswith("⚠") else "floor"
    return f"<p class='floor'>{_e(pixel_floor_sentence(runs))}</p>" + (
        f"<p class='{css}'>{_e(metadata)}</p>" if metadata else ""
    )


def _foundation_line(runs: list[dict]) -> str:
    """One sentence: what the best foundation model adds over the best ImageNet CNN and the floor ('' without one)."""
    sentence = foundation_sentence(runs)
    return f"<p class='floor'>{_e(sentence)}</p>" if sentence else ""


def _split_level_table(ranked: list[dict]) -> str:
    """Each run's chosen configuration under patient-grouped vs plain image cross-validation."""
    rows = []
    for run in ranked:
        levels = (run.get("audit") or {}).get("split_levels")
        if not levels:
            continue
        patient, image = levels.get("patient") or {}, levels.get("image") or {}
        inflation = _num(levels.get("inflation"))
        inflated = "" if math.isnan(inflation) else f"{inflation:+.3f}"
        shared = _num(image.get("validation_images_with_patient_in_training"))
        rows.append(
            _row(
                _e(_run_name(run)),
                f"{_fmt(patient.get('auc_mean'))} ± {_fmt(patient.get('auc_std'))}",
                f"{_fmt(image.get('auc_mean'))} ± {_fmt(image.get('auc_std'))}",
                f"<b>{inflated}</b>" if inflated else "n/a",
                "n/a" if math.isnan(shared) else f"{shared:.0%}",
            )
        )
    if not rows:
        return (
            "<p class='note'>No patient- vs image-level CV audit in these runs (by default it runs for logreg's "
            "runs only, <code>--image-cv-all</code> for every classifier; classify ran with "
            "<code>--no-image-cv</code>, or the runs predate it).</p>"
        )
    head = (
        "run",
        "CV AUC, patient folds",
        "CV AUC, image folds",
        "inflation",
        "image folds: validation images whose patient also had images in training",
    )
    folds = next(
        ((run.get("audit") or {}).get("split_levels") or {}).get("folds") for run in ranked if run.get("audit")
    )
    return (
        "<h3>Patient-level vs image-level cross-validation</h3>"
        + _table(head, rows)
        + "<p class='note'>Each run's chosen configuration, cross-validated on its training rows with "
        f"{_e(folds)} folds twice: patient-grouped (StratifiedGroupKFold, what featx does) and by image ignoring "
        "patients (StratifiedKFold, what a random image split does). Inflation is how much higher the image-level "
        "figure is: what a paper splitting images at random would have reported on top of the honest number.</p>"
    )


# ---------------------------------------------------------------- data efficiency


def _efficiency_plot(ranked: list[dict], random_weights: bool, where) -> _Plot | None:
    curves = [run for run in ranked if (run.get("efficiency") or {}).get("points")]
    if not curves:
        return None
    backbones = list(dict.fromkeys(str(run.get("backbone")) for run in curves))
    classifiers = list(dict.fromkeys(str(run.get("classifier")) for run in curves))
    styles = ("-", "--", ":", "-.")
    markers = ("o", "s", "^", "D", "v")
    figure = _figure(7.4, 5.0)
    ax = figure.subplots()
    for run in curves:
        points = [p for p in run["efficiency"]["points"] if p.get("auc_mean") is not None]
        if not points:
            continue
        x = np.array([_num(p.get("n_patients_mean")) for p in points])
        mean = np.array([_num(p.get("auc_mean")) for p in points])
        low = np.array([_num(p.get("auc_min")) for p in points])
        high = np.array([_num(p.get("auc_max")) for p in points])
        color = COLORS[backbones.index(str(run.get("backbone"))) % len(COLORS)]
        k = classifiers.index(str(run.get("classifier")))
        ax.plot(
            x,
            mean,
            color=color,
            linestyle=styles[k % len(styles)],
            marker=markers[k % len(markers)],
            markersize=4,
            linewidth=1.6,
            label=_run_name(run),
        )
        ax.fill_between(x, low, high, color=color, alpha=0.12, linewidth=0)
    ax.set_xscale("log")
    ticks = sorted({round(_num(p.get("n_patients_mean"))) for run in curves for p in run["efficiency"]["points"]})
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training patients (log scale; mean over seeds)")
    ax.set_ylabel("test ROC AUC")
    ax.set_title("Data efficiency: test AUC vs training patients (band: lowest to highest seed)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="lower right", fontsize=7)
    return _Plot(
        f"efficiency_test_auc{where.suffix}.png",
        f"Data efficiency — test AUC vs training patients{where.tag}",
        _render(figure, random_weights),
    )


def _efficiency_section(ranked: list[dict], plot: _Plot | None) -> str:
    curves = [run for run in ranked if (run.get("efficiency") or {}).get("points")]
    if not curves:
        return (
            "<p class='note'>No data-efficiency curves in these runs; run <code>featx classify --train-fraction "
            "0.01,0.1,0.3,1.0</code> to re-fit each run's chosen configuration on fewer training patients.</p>"
        )
    fractions = sorted({p["fraction"] for run in curves for p in run["efficiency"]["points"]})
    head = "".join(f"<th>{fraction:.0%}</th>" for fraction in fractions)
    rows, errors = [], 0
    for run in curves:
        by_fraction = {p["fraction"]: p for p in run["efficiency"]["points"]}
        cells = []
        for fraction in fractions:
            point = by_fraction.get(fraction)
            if point is None:
                cells.append("")
                continue
            errors += sum(1 for error in point.get("errors") or [] if error)
            spread = "" if point.get("from_run") else f" ± {_fmt(point.get('auc_std'))}"
            cells.append(
                f"{_fmt(point.get('auc_mean'))}{spread}<br><span class='note'>"
                f"{_num(point.get('n_patients_mean')):.0f} patients</span>"
            )
        seconds = _fmt(run["efficiency"].get("seconds"), 1)
        rows.append(
            f"<tr><td>{_e(_run_name(run))}</td>{''.join(f'<td>{c}</td>' for c in cells)}"
            f"<td>{_e(run['efficiency'].get('n_fits'))}</td><td>{seconds}</td></tr>"
        )
    total = sum(_num(run["efficiency"].get("seconds"), 0.0) for run in curves)
    fits = sum(int(run["efficiency"].get("n_fits") or 0) for run in curves)
    seeds = curves[0]["efficiency"].get("seeds")
    failed = f" {errors} subsample fit(s) failed (too few rows for the estimator); see the run JSON." if errors else ""
    return (
        _plots_html([plot] if plot else [], "")
        + f"<table><tr><th>run</th>{head}<th>fits</th><th>seconds</th></tr>{''.join(rows)}</table>"
        f"<p class='note'>Each run's chosen configuration (its best_params, no new search) re-fitted on a stratified "
        f"sample of whole training patients ({_e(seeds)} seeds per fraction, at least one patient per class) and "
        f"scored on the same test rows: mean ± sd over seeds; 100% is the run itself. Cost: <b>{total:.1f} s</b> "
        f"for {fits} fits over {len(curves)} runs (stage two never touches an image).{failed}</p>"
    )


# ---------------------------------------------------------------- audits: duplicates


def _audits_by_cache(ranked: list[dict]) -> OrderedDict[str, tuple[dict, dict]]:
    """backbone (or backbone/pooling) -> (first run, its audit), for runs that carry a data audit."""
    several_poolings = len({run.get("pooling") for run in ranked}) > 1
    audits: OrderedDict[str, tuple[dict, dict]] = OrderedDict()
    for run in ranked:
        audit = run.get("audit") or {}
        if audit.get("near_duplicates") is not None:
            audits.setdefault(_group_key(run, several_poolings), (run, audit))
    return audits


def _pair_images(pair: dict, roots: list[Path]):
    from featx.data.images import load_image
    from featx.errors import ImageReadError

    images = []
    for rel in pair.get("ids") or []:
        path = next((root / rel for root in roots if (root / rel).is_file()), None)
        if path is None:
            return None
        try:
            images.append(load_image(path, 112))
        except ImageReadError:
            return None
    return images


def _wrapped_name(name: str, width: int = 19, lines: int = 3) -> str:
    """A file name on at most `lines` lines of `width` characters, broken after _ - . where it can be; a longer
    one keeps its start and its end around '…' (the end tells files of one series apart)."""
    if len(name) > width * lines:
        keep = width * lines - 1
        name = f"{name[: keep - keep // 2]}…{name[-(keep // 2) :]}"
    pieces = [token[i : i + width] for token in re.findall(r"[^_.-]*[_.-]?", name) for i in range(0, len(token), width)]
    out = [""]
    for piece in pieces:
        if out[-1] and len(out[-1]) + len(piece) > width:
            out.append("")
        out[-1] += piece
    if len(out) > lines:  # breaking at separators took more lines than slicing: slice
        out = [name[i : i + width] for i in range(0, len(name), width)]
    return "\n".join(out)


PAIR_WIDTH, PAIR_IMAGE, PAIR_TITLE, LABEL_LINE = 3.2, 1.45, 0.3, 0.15  # inches: one pair's panel


def _near_duplicate_pair(panel, pair: dict, images, label_lines: int) -> None:
    """One test–training pair in its own shaded panel: its cosine above, each image's split and file name below."""
    panel.set_facecolor("#eef1f5")
    above = bool(pair.get("above_threshold"))
    panel.suptitle(
        f"cos {pair['similarity']:.3f}" + (" (at or above the threshold)" if above else ""),
        fontsize=9,
        color="#b00020" if above else "#333333",
        fontweight="bold" if above else "normal",
        y=0.985,
        va="top",
    )
    label_height = LABEL_LINE * label_lines + 0.1
    height = PAIR_TITLE + PAIR_IMAGE + label_height
    axes = panel.subplots(
        1,
        2,
        gridspec_kw={
            "left": 0.02,
            "right": 0.98,
            "wspace": 0.04,
            "top": 1 - PAIR_TITLE / height,
            "bottom": label_height / height,
        },
    )
    for side, ax in enumerate(axes):
        ax.imshow(images[side])
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel(f"{pair['splits'][side]}\n{_wrapped_name(Path(pair['ids'][side]).name)}", fontsize=8)


def _near_duplicate_plot(
    group: str, audit: dict, data_root, random_weights: bool, where, n_pairs: int = 6
) -> _Plot | None:
    """The closest evaluated-vs-training pairs as thumbnails, when the images can be found: each pair in its own
    shaded panel (two images close together, wider gaps between pairs), file names whole under the images."""
    from matplotlib.figure import Figure

    roots = [Path(root) for root in (data_root, audit.get("data_root")) if root]
    pairs = []
    for pair in (audit["near_duplicates"].get("top_pairs") or [])[:n_pairs]:
        images = _pair_images(pair, roots)
        if images is None:
            return None
        pairs.append((pair, images))
    if not pairs:
        return None
    columns = min(3, len(pairs))
    rows = math.ceil(len(pairs) / columns)
    label_lines = 1 + max(_wrapped_name(Path(i).name).count("\n") + 1 for pair, _ in pairs for i in pair["ids"])
    pair_height = PAIR_TITLE + PAIR_IMAGE + LABEL_LINE * label_lines + 0.1
    top = 0.55 if random_weights else 0.05  # room for _render's banner: a fixed layout, no layout engine
    height = top + rows * pair_height + 0.12 * (rows - 1)
    figure = Figure(figsize=(PAIR_WIDTH * columns, height), dpi=100)
    # subfigures take their place from the grid's ratios only (not its margins or spacing): gaps are grid cells
    gap = 0.12
    grid = figure.add_gridspec(
        2 * rows,
        2 * columns - 1,
        height_ratios=[top] + [pair_height, gap] * (rows - 1) + [pair_height],
        width_ratios=[PAIR_WIDTH - gap * (columns - 1) / columns, gap] * (columns - 1)
        + [PAIR_WIDTH - gap * (columns - 1) / columns],
    )
    for index, (pair, images) in enumerate(pairs):
        row, column = divmod(index, columns)
        panel = figure.add_subfigure(grid[1 + 2 * row, 2 * column])
        _near_duplicate_pair(panel, pair, images, label_lines)
    return _Plot(
        f"near_duplicates_{_safe_name(group)}{where.suffix}.png",
        f"Closest test–training pairs — {group}{where.tag}",
        _render(figure, random_weights),
    )


def _split_pair_text(entries: list[dict], key: str = "pairs", cross_only: bool = False) -> str:
    parts = []
    for entry in entries:
        a, b = entry.get("splits") or ["?", "?"]
        if cross_only and a == b:
            continue
        same = entry.get("same_patient")
        extra = f" ({same} same patient)" if same else ""
        parts.append(f"{_e(a)}–{_e(b)}: {_e(entry.get(key))}{extra}")
    return "; ".join(parts) or "none"


def _audit_section(where, data_root) -> tuple[str, list[_Plot]]:
    """One dataset's near- and exact-duplicate audits (from its runs' JSON) and the thumbnails of the closest pairs."""
    audits = _audits_by_cache(where.runs)
    if not audits:
        return "<p class='note'>No duplicate audit in these runs (they predate it).</p>", []
    plots: list[_Plot] = []
    near_rows, pair_lists, exact_seen, exact_parts = [], [], set(), []
    for group, (run, audit) in audits.items():
        near = audit["near_duplicates"]
        near_rows.append(
            _row(
                _e(group),
                _e(f"{near.get('n_rows')} × {near.get('dim')}"),
                _fmt(near.get("threshold"), 3),
                _split_pair_text(near.get("split_pairs") or [], cross_only=True),
                f"<b>{_e(near.get('evaluated_with_duplicate_in_training'))}</b> of {_e(near.get('n_evaluated'))}",
                _split_pair_text(near.get("split_pairs") or []),
                _fmt(near.get("seconds"), 2),
            )
        )
        plot = _near_duplicate_plot(group, audit, data_root, _is_random(run), where)
        if plot is not None:
            plots.append(plot)
        else:
            listed = "".join(
                f"<tr><td>{_e(p['splits'][0])}: <code>{_e(p['ids'][0])}</code></td><td>{_e(p['splits'][1])}: "
                f"<code>{_e(p['ids'][1])}</code></td><td>{_fmt(p['similarity'])}</td></tr>"
                for p in (near.get("top_pairs") or [])[:6]
            )
            if listed:
                pair_lists.append(
                    f"<p class='note'>{_e(group)}: closest test–training pairs (image files not found "
                    f"under the data root, so listed by id)</p><table class='small'><tr><th>training</th>"
                    f"<th>evaluated</th><th>cos</th></tr>{listed}</table>"
                )
        exact = audit.get("exact_duplicates") or {}
        key = json.dumps({k: v for k, v in exact.items() if k != "seconds"}, sort_keys=True, default=str)
        if key in exact_seen:
            continue
        exact_seen.add(key)
        if exact.get("source") is None:
            exact_parts.append(f"<li>{_e(group)}: not checked — {_e(exact.get('skipped'))}.</li>")
            continue
        examples = "; ".join(
            " = ".join(f"{_e(s)}:{_e(i)}" for s, i in zip(example["splits"], example["ids"]))
            for example in (exact.get("examples") or [])[:3]
        )
        exact_parts.append(
            f"<li>{_e(exact.get('n_hashed'))} of {_e(exact.get('n_rows'))} images hashed (sha256 of the files, "
            f"{_fmt(exact.get('seconds'), 1)} s): <b>{_e(exact.get('duplicate_groups'))}</b> groups of identical files "
            f"({_e(exact.get('rows_in_groups'))} images); pairs per split pair: "
            f"{_split_pair_text(exact.get('split_pairs') or [])}"
            + (f". E.g. {examples}" if examples else "")
            + ".</li>"
        )
    head = (
        "embeddings",
        "rows × dims",
        "threshold",
        "pairs across splits",
        "test images with a training near-duplicate",
        "all pairs per split pair",
        "seconds",
    )
    html_text = (
        "<h3>Near-duplicate images</h3>"
        + _table(head, near_rows)
        + "<p class='note'>Pairs of images whose embeddings have a cosine similarity at or above the threshold after "
        "mean-centring (centring removes the direction every chest X-ray shares), from each cache, over the rows the "
        "runs used; splits as the runs used them (held-out patients are <i>test</i>). Near duplicates within a "
        "patient are expected; across splits they let a model see a test image in training. The thumbnails are the "
        "closest test–training pairs whether or not they pass the threshold (red: at or above).</p>"
        + _plots_html(plots, "")
        + "".join(pair_lists)
        + f"<h3>Exact duplicates (file hash)</h3><ul>{''.join(exact_parts)}</ul>"
    )
    return html_text, plots


# ---------------------------------------------------------------- the report


def _dataset_plots(where: _DatasetRuns, random_weights: bool) -> dict[str, list[_Plot]]:
    """One dataset's heatmap, its ROC, confusion and calibration panels (one per feature file) and forest plots."""
    ranked = where.runs
    several_poolings = len({run.get("pooling") for run in ranked}) > 1
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for run in ranked:
        groups.setdefault(_group_key(run, several_poolings), []).append(run)
    classifier_order: list[str] = []
    for run in ranked:
        if run["classifier"] not in classifier_order:
            classifier_order.append(run["classifier"])
    for key in groups:
        groups[key].sort(key=lambda r: classifier_order.index(r["classifier"]))
    # a plot of one feature file carries the random-weights banner only when its own runs are random (never pixels)
    random_group = {g: any(_is_random(run) for run in rs) for g, rs in groups.items()}
    roc = [p for g, rs in groups.items() if (p := _roc_plot(g, rs, random_group[g], where)) is not None]
    best = ranked[0]
    if best.get("task", "binary") != "binary":
        per_class = _per_class_roc_plot(best, _is_random(best))
        if per_class is not None:
            roc.insert(0, per_class)
    best_of_group: OrderedDict[str, dict] = OrderedDict()
    for run in ranked:
        if run.get("subgroups"):
            best_of_group.setdefault(_group_key(run, several_poolings), run)
    return {
        "heatmap": [_heatmap(groups, classifier_order, random_weights, where)],
        "roc": roc,
        "confusion": [
            p for g, rs in groups.items() if (p := _confusion_plot(g, rs, random_group[g], where)) is not None
        ],
        "calibration": [
            p for g, rs in groups.items() if (p := _calibration_plot(g, rs, random_group[g], where)) is not None
        ],
        "forest": [p for run in best_of_group.values() if (p := _forest_plot(run, random_weights)) is not None],
        "efficiency": [p for p in (_efficiency_plot(ranked, random_weights, where),) if p is not None],
    }


def _best_line(where: _DatasetRuns, rows_by_id: dict[str, dict]) -> str:
    """The report's top line for one dataset: its best run, whether that is the raw-pixel floor, and how many
    runs are statistically tied with it (the leaderboard's ≈ best: paired DeLong p ≥ 0.05)."""
    top = where.runs[0]
    scope = f" on dataset {where.dataset.index}" if where.dataset.count > 1 else ""
    text = f"Best{scope}: <b>{_e(top.get('run_id'))}</b>, test AUC {_e(_auc_text(_auc(top)))}"
    if top.get("backbone") == PIXEL_FLOOR:
        text += " — <b>the raw-pixel floor</b>: no backbone run scored above raw pixels"
    elif _is_floor(top):
        text += f" — <b>a floor ({_e(top.get('backbone'))})</b>: no backbone run scored above it"
    if (rows_by_id.get(top["run_id"]) or {}).get("not_worse_than_best") is None:
        return text + " (ties not tested: the paired DeLong test needs binary runs with test predictions)."
    tied = [run for run in where.runs[1:] if (rows_by_id.get(run["run_id"]) or {}).get("not_worse_than_best")]
    if len(where.runs) == 1:
        return text + "."
    if not tied:
        return text + "; every other run scored significantly below it."
    text += (
        f"; {len(tied)} other {plural(len(tied), 'run')} {'is' if len(tied) == 1 else 'are'} statistically "
        "tied with it (≈ best: paired DeLong p ≥ 0.05)"
    )
    if _is_floor(top):
        backbone_runs = sum(1 for run in tied if not _is_floor(run))
        text += (
            f", {backbone_runs} of them {'a backbone run' if backbone_runs == 1 else 'backbone runs'}"
            if backbone_runs
            else ", none of them a backbone run"
        )
    return text + "."


def write_report(results_dir, out=None, *, manifest=None, data_root=None) -> Path:
    """Write the self-contained HTML report (default results_dir/report.html) and results_dir/plots/*.png.

    `manifest` (and its `data_root`) are optional: when given, `featx manifest check`'s
    findings (missing files, duplicates, patient leakage) join the dataset section.
    """
    results_dir = Path(results_dir)
    runs = records.load_runs(results_dir)
    out = Path(out) if out is not None else results_dir / "report.html"
    rows = leaderboard_rows(runs)
    by_id = {run["run_id"]: run for run in runs}
    ranked, rows_by_id = [by_id[row["run_id"]] for row in rows], {row["run_id"]: row for row in rows}
    groups_of_runs = [_DatasetRuns(d, [by_id[row["run_id"]] for row in d.rows]) for d in datasets(rows)]
    random_weights = any(_is_random(run) for run in runs)

    import matplotlib

    with matplotlib.rc_context(LITERAL_TEXT):
        panels = [_dataset_plots(where, random_weights) for where in groups_of_runs]
        audits = [_audit_section(where, data_root) for where in groups_of_runs]
    audit_html = {where.dataset.index: html for where, (html, _) in zip(groups_of_runs, audits)}
    for panel, (_, near_duplicate_plots) in zip(panels, audits):
        panel["near_duplicates"] = near_duplicate_plots
    kinds = ("heatmap", "roc", "confusion", "calibration", "forest", "efficiency", "near_duplicates")
    plots = [plot for panel in panels for kind in kinds for plot in panel[kind]]

    plots_dir = results_dir / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        if old.name.startswith(PLOT_PREFIXES):
            old.unlink()
    for plot in plots:
        atomic_write_bytes(plots_dir / plot.name, plot.png)
    from featx.results import claim, validation

    external_html, external_plots = validation.external_section(ranked)
    for name, png in external_plots:
        atomic_write_bytes(plots_dir / name, png)

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
    if len(groups_of_runs) > 1:
        banner += f"<div class='warn'>⚠ {_e(several_datasets_warning(len(groups_of_runs)))}</div>"
    tasks = sorted({str(run.get("task")) for run in runs})
    nav = "".join(f"<a href='#{key}'>{_e(title)}</a>" for key, title in SECTIONS)
    best_lines = [_best_line(where, rows_by_id) for where in groups_of_runs]
    best_line = f"{len(runs)} {plural(len(runs), 'run')} (task {_e(', '.join(tasks))}). " + " ".join(best_lines)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    def per_dataset(render) -> str:
        """A section's content once per dataset, each under the heading that names the dataset."""
        return "".join(
            f"<h3>{_e(where.dataset.heading)}</h3>{render(where, panel)}"
            for where, panel in zip(groups_of_runs, panels)
        )

    body = [
        f"<h1>featx report</h1><p class='meta'>{_e(results_dir)} · generated {created} by featx {_e(__version__)}</p>",
        banner,
        f"<p>{best_line}</p><nav>{nav}</nav>",
        f"<h2 id='dataset'>Dataset</h2>{_dataset_section(ranked, findings)}",
        "<h2 id='leaderboard'>Leaderboard</h2>"
        + per_dataset(
            lambda where, panel: (
                _pixel_floor_line(where.runs)
                + _foundation_line(where.runs)
                + _leaderboard_table(where.runs, rows_by_id)
                + _split_level_table(where.runs)
            )
        ),
        "<h2 id='heatmap'>Test AUC heatmap</h2>" + per_dataset(lambda where, panel: _plots_html(panel["heatmap"], "")),
        "<h2 id='roc'>ROC curves</h2><p class='note'>One panel per backbone, one line per classifier; legend: test "
        "AUC with its 95% CI; the dot marks the threshold chosen on out-of-fold predictions.</p>"
        + per_dataset(lambda where, panel: _plots_html(panel["roc"], "No test predictions in the run files.")),
        "<h2 id='confusion'>Confusion matrices</h2><p class='note'>Test split at each run's chosen threshold; "
        "counts and row percentages.</p>"
        + per_dataset(lambda where, panel: _plots_html(panel["confusion"], "No confusion matrices in the run files.")),
        "<h2 id='calibration'>Calibration</h2><p class='note'>Reliability diagrams of the test probabilities "
        "(up to 10 equal-count bins); Brier score in the legend.</p>"
        + per_dataset(lambda where, panel: _plots_html(panel["calibration"], "No test predictions in the run files.")),
        "<h2 id='subgroups'>Subgroups</h2>"
        + (
            per_dataset(lambda where, panel: _subgroup_section(where.runs, panel["forest"]))
            if any(run.get("subgroups") for run in runs)
            else _subgroup_section(ranked, [])
        ),
        "<h2 id='efficiency'>Data efficiency</h2>"
        + per_dataset(lambda where, panel: _efficiency_section(where.runs, (panel["efficiency"] or [None])[0])),
        "<h2 id='audits'>Audits</h2>" + per_dataset(lambda where, panel: audit_html[where.dataset.index]),
        f"<h2 id='external'>External validation</h2>{external_html}",
        f"<h2 id='null'>Permutation null</h2>{validation.null_section(ranked)}",
        f"<h2 id='claim'>CLAIM checklist</h2>{claim.claim_section(ranked)}",
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


def report_command(results_dir, out, console, data_root=None) -> None:
    """`featx report`: write the HTML report and say where it and its plots are."""
    results_dir = Path(results_dir)
    path = write_report(results_dir, out, data_root=data_root)
    runs = records.load_runs(results_dir)
    if any(_is_random(run) for run in runs):
        console.print(f"[bold white on red] {RANDOM_BANNER} [/]")
    n_plots = sum(1 for p in (results_dir / "plots").glob("*.png") if p.name.startswith(PLOT_PREFIXES))
    console.print(
        f"Report: [bold]{path}[/] ({len(runs)} {plural(len(runs), 'run')}; "
        f"{n_plots} {plural(n_plots, 'plot')} also in {results_dir / 'plots'})"
    )
