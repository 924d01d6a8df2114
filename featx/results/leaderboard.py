"""results/runs/*.json -> the leaderboard: a terminal table, leaderboard.csv and leaderboard.md.

Runs are comparable only on the same test rows, so every table is per dataset
(the manifest's sha256 and the test rows: ids and truth); a results folder
holding several datasets gets one table and one pivot per dataset and a warning,
never one ranking across them. Within a dataset rows are sorted by test ROC AUC,
and a row is marked when its test AUC is not significantly below the best run's
(paired DeLong test on the stored test predictions, p >= 0.05): the honest way
to say "these are tied" when a test set has a few hundred images. Runs on
random-init weights are labelled in every table, with a banner, because their
numbers say nothing about ImageNet features.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.errors import ResultsError
from featx.extract.backbones import PIXEL_FLOOR, RANDOM_BANNER
from featx.files import atomic_write_bytes
from featx.results.records import backbone_group, load_runs

ALPHA = 0.05
BEST_MARK = "★"
AUC_DIGITS = 3
CSV_COLUMNS = (
    "dataset",
    "rank",
    "run_id",
    "features",
    "backbone",
    "group",
    "pooling",
    "classifier",
    "task",
    "weights",
    "random_weights",
    "test_auc",
    "test_auc_ci_low",
    "test_auc_ci_high",
    "test_auc_se",
    "not_worse_than_best",
    "p_vs_best",
    "cv_auc_mean",
    "cv_auc_std",
    "cv_auc_image_folds",
    "image_split_inflation",
    "threshold_rule",
    "threshold",
    "sensitivity",
    "specificity",
    "accuracy",
    "balanced_accuracy",
    "pr_auc",
    "n_train",
    "n_test",
    "test_source",
    # issue 17 (results/validation.py): the first external set's AUC, the permutation null's p-value
    "external_set",
    "external_auc",
    "external_auc_ci_low",
    "external_auc_ci_high",
    "null_p_value",
    "fit_s",
    "total_s",
    "best_params",
    "feature_sha256",
    "manifest_sha256",
    "created_utc",
)

HOW_TO_READ = f"""\
## How to read this

- **Datasets**: runs are ranked only against runs on the same dataset: the same manifest (sha256)
  and the same test rows. A results folder holding runs on several datasets gets one table per
  dataset; their AUCs are not comparable across tables.
- **Test AUC [95% CI]**: ROC AUC on the test rows (binary; macro one-vs-rest for multi-class,
  mean per-label for multi-label), with DeLong's 95% confidence interval. The test rows were
  used once, after model selection.
- **CV AUC**: mean ± sd over the patient-grouped cross-validation folds of the training rows for
  the chosen hyper-parameters. It picked the model; a large gap to the test AUC hints at a
  distribution shift between the splits, or at overfitting the grid.
- **Sens / Spec / Acc**: at the decision threshold chosen on out-of-fold training predictions
  (the rule is in the CSV), never on the test rows.
- **{BEST_MARK}**: the test AUC is not significantly below the best run on the same test images
  (paired DeLong test, p ≥ {ALPHA}). Runs without the mark are significantly worse; runs with it
  are statistically tied with the best. Multi-class and multi-label runs are not marked.
- **Pivot**: the best test AUC per backbone × classifier (over poolings; the pooling is named
  when there is more than one). A backbone is named by its feature file (`tiny_32px` for
  `features/tiny_32px.h5`), so two caches of one backbone stay apart.
- **RANDOM-INIT** rows come from randomly initialised backbones: they test the pipeline and
  measure nothing about ImageNet features.
"""


# ---------------------------------------------------------------- rows


def _test_auc(run) -> float:
    value = ((run.get("test") or {}).get("auc") or {}).get("value")
    return float(value) if value is not None else math.nan


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _sort_key(run):
    auc = _test_auc(run)
    cv = _number(run.get("cv_auc_mean"))
    return (math.isnan(auc), -auc if not math.isnan(auc) else 0.0, -(cv or 0.0), run["run_id"])


def features_name(run) -> str:
    """The name of a run's feature file (its stem: `tiny_32px` for features/tiny_32px.h5), else its backbone.

    Two caches of one backbone (other image size, weights or data) are different models: tables
    name them by file so they never share a row or a cell.
    """
    name = run.get("feature_file")
    return Path(str(name)).name.removesuffix(".h5") if name else str(run.get("backbone", "?"))


def _test_rows(run) -> tuple[list[str], list] | None:
    predictions = run.get("test_predictions") or {}
    ids, y_true, score = predictions.get("ids"), predictions.get("y_true"), predictions.get("score")
    if not ids or y_true is None or score is None or len(ids) != len(y_true) or len(ids) != len(score):
        return None
    return [str(i) for i in ids], list(y_true)


def dataset_key(run) -> str:
    """Which runs may be compared: '<manifest sha256 12>/<test rows 8>'.

    The test-rows part is a sha256 of the sorted (id, truth) pairs of the stored test
    predictions; a run without them is keyed by its test row count and test source.
    """
    manifest = str(run.get("manifest_sha256") or "?")[:12]
    rows = _test_rows(run)
    if rows is None:
        data = run.get("data") or {}
        return f"{manifest}/n{data.get('n_test', '?')}-{data.get('test_source', '?')}"
    pairs = sorted(zip(rows[0], (json.dumps(t) for t in rows[1])))
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for i, t in pairs).encode()).hexdigest()
    return f"{manifest}/{digest[:8]}"


def _comparable(run) -> bool:
    return run.get("task") == "binary" and _test_rows(run) is not None and not math.isnan(_test_auc(run))


def _aligned(run):
    predictions = run["test_predictions"]
    order = sorted(range(len(predictions["ids"])), key=lambda i: str(predictions["ids"][i]))
    y_true = np.asarray([predictions["y_true"][i] for i in order], dtype=int)
    score = np.asarray([predictions["score"][i] for i in order], dtype=float)
    return y_true, score


def compare_with_best(runs: list[dict]) -> dict[str, tuple[float | None, bool | None]]:
    """run_id -> (p-value against the best run of the same dataset, not significantly worse).

    (None, None) for multi-class and multi-label runs and runs without usable test predictions.
    """
    from featx.classify import evaluate

    groups: dict[str, list[dict]] = {}
    result: dict[str, tuple[float | None, bool | None]] = {}
    for run in runs:
        if _comparable(run):
            groups.setdefault(dataset_key(run), []).append(run)
        else:
            result[run["run_id"]] = (None, None)
    for members in groups.values():
        best = max(members, key=lambda r: (_test_auc(r), -len(r["run_id"])))
        y_true, best_score = _aligned(best)
        for run in members:
            if run is best:
                result[run["run_id"]] = (1.0, True)
                continue
            _, score = _aligned(run)
            p = float(evaluate.delong_paired_pvalue(y_true, best_score, score))
            if math.isnan(p):  # identical rankings: zero variance of the difference
                tied = abs(_test_auc(run) - _test_auc(best)) < 1e-12
                result[run["run_id"]] = (None, tied)
            else:
                result[run["run_id"]] = (p, p >= ALPHA)
    return result


def _dataset_order(runs: list[dict]) -> list[str]:
    """Dataset keys, the one with most runs first (then the most recent run), so the order is stable."""
    counts: dict[str, int] = {}
    latest: dict[str, str] = {}
    for run in runs:
        key = dataset_key(run)
        counts[key] = counts.get(key, 0) + 1
        latest[key] = max(latest.get(key, ""), str(run.get("created_utc") or ""))
    by_latest = sorted(counts, key=lambda k: latest[k], reverse=True)
    return sorted(by_latest, key=lambda k: -counts[k])


def leaderboard_rows(runs: list[dict]) -> list[dict]:
    """One flat row per run (the CSV columns): grouped by dataset, each sorted by test AUC, best first.

    `rank` counts within the row's dataset; runs of different datasets are never ranked together.
    """
    marks = compare_with_best(runs)
    order = {key: index for index, key in enumerate(_dataset_order(runs))}
    by_dataset: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: (order[dataset_key(r)], _sort_key(r))):
        by_dataset.setdefault(dataset_key(run), []).append(run)
    rows = []
    for dataset, members in by_dataset.items():
        for rank, run in enumerate(members, start=1):
            rows.append(_row(run, dataset, rank, marks[run["run_id"]]))
    return rows


def _validation_columns(run: dict) -> dict:
    from featx.results.validation import leaderboard_columns

    return leaderboard_columns(run)


def _row(run: dict, dataset: str, rank: int, mark: tuple[float | None, bool | None]) -> dict:
    test = run.get("test") or {}
    auc = test.get("auc") or {}
    threshold = run.get("threshold") or {}
    timings = run.get("timings") or {}
    data = run.get("data") or {}
    p_value, not_worse = mark
    levels = (run.get("audit") or {}).get("split_levels") or {}
    fit_parts = [_number(timings.get(k)) for k in ("search_s", "oof_s")]
    return {
        "dataset": dataset,
        "rank": rank,
        "run_id": run["run_id"],
        "features": features_name(run),
        "backbone": run["backbone"],
        "group": backbone_group(run),
        "pooling": run["pooling"],
        "classifier": run["classifier"],
        "task": run["task"],
        "weights": run.get("weights"),
        "random_weights": bool(run.get("random_weights", run.get("weights") == "random")),
        "test_auc": _number(auc.get("value")),
        "test_auc_ci_low": _number(auc.get("ci_low")),
        "test_auc_ci_high": _number(auc.get("ci_high")),
        "test_auc_se": _number(auc.get("se")),
        "not_worse_than_best": not_worse,
        "p_vs_best": p_value,
        "cv_auc_mean": _number(run.get("cv_auc_mean")),
        "cv_auc_std": _number(run.get("cv_auc_std")),
        "cv_auc_image_folds": _number((levels.get("image") or {}).get("auc_mean")),
        "image_split_inflation": _number(levels.get("inflation")),
        "threshold_rule": threshold.get("rule") or (run.get("config") or {}).get("threshold_rule"),
        "threshold": _number(threshold.get("value")),
        "sensitivity": _number(test.get("sensitivity")),
        "specificity": _number(test.get("specificity")),
        "accuracy": _number(test.get("accuracy")),
        "balanced_accuracy": _number(test.get("balanced_accuracy")),
        "pr_auc": _number(test.get("pr_auc")),
        "n_train": data.get("n_train"),
        "n_test": data.get("n_test"),
        "test_source": data.get("test_source"),
        **_validation_columns(run),
        "fit_s": sum(fit_parts) if all(v is not None for v in fit_parts) else _number(timings.get("search_s")),
        "total_s": _number(timings.get("total_s")),
        "best_params": run.get("best_params") or {},
        "feature_sha256": run.get("feature_sha256"),
        "manifest_sha256": run.get("manifest_sha256"),
        "created_utc": run.get("created_utc"),
    }


@dataclass(frozen=True)
class Dataset:
    """The runs of one dataset (same manifest, same test rows), in leaderboard order."""

    key: str
    index: int  # 1-based
    count: int  # datasets in the results folder
    rows: list[dict]

    @property
    def heading(self) -> str:
        """'Dataset 1 of 2: manifest 1a2b3c4d5e6f, test rows 9f8e7d6c (59 images, from the manifest)'."""
        manifest, test_rows = self.key.split("/", 1)
        first = self.rows[0]
        source = {"manifest": "from the manifest", "held_out_patients": "held-out patients"}.get(
            str(first.get("test_source")), str(first.get("test_source") or "?")
        )
        which = f"Dataset {self.index} of {self.count}" if self.count > 1 else "Dataset"
        return f"{which}: manifest {manifest}, test rows {test_rows} ({first.get('n_test', '?')} images, {source})"


def datasets(rows: list[dict]) -> list[Dataset]:
    """leaderboard_rows grouped by their dataset, in order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["dataset"], []).append(row)
    return [Dataset(key, i, len(groups), members) for i, (key, members) in enumerate(groups.items(), start=1)]


def several_datasets_warning(n_datasets: int, where: str = "This results folder") -> str:
    """The one warning when a results folder mixes datasets (terminal, markdown, report)."""
    return (
        f"{where} holds runs on {n_datasets} different datasets (their manifests or test rows differ): each is "
        "ranked on its own below, never against the others; keep one dataset per results folder (--out)."
    )


# ---------------------------------------------------------------- the sentences beside every leaderboard


def _run_name(run) -> str:
    return f"{features_name(run)}/{run['pooling']}/{run['classifier']}"


def _auc_ci_text(run) -> str:
    auc = (run.get("test") or {}).get("auc") or {}
    return format_auc(auc.get("value"), auc.get("ci_low"), auc.get("ci_high"))


def pixel_floor_sentence(runs: list[dict]) -> str:
    """What the best backbone run of one dataset adds over its best raw-pixel run (`pixels`), in one sentence.

    With the paired DeLong p-value when both runs were scored on the same test rows.
    """
    from featx.classify import evaluate

    ordered = [run for run in sorted(runs, key=_sort_key) if not math.isnan(_test_auc(run))]
    floor = next((run for run in ordered if run["backbone"] == PIXEL_FLOOR), None)
    best = next((run for run in ordered if run["backbone"] not in (PIXEL_FLOOR, "metadata")), None)
    if floor is None:
        return (
            "No raw-pixel floor in these runs: extract the pixels backbone (featx extract adds it unless "
            "--no-pixels) to see what a backbone adds over raw pixels."
        )
    floor_text = f"Raw-pixel floor: {_run_name(floor)} reaches test AUC {_auc_ci_text(floor)}"
    if best is None:
        return f"{floor_text}; no backbone run to compare it with."
    gain = _test_auc(best) - _test_auc(floor)
    tested = ""
    if _comparable(best) and _comparable(floor) and dataset_key(best) == dataset_key(floor):
        y_true, best_score = _aligned(best)
        p_value = float(evaluate.delong_paired_pvalue(y_true, best_score, _aligned(floor)[1]))
        tested = "" if math.isnan(p_value) else f" (paired DeLong p = {p_value:.3g})"
    random_note = ", random-init" if run_is_random(best) else ""
    return (
        f"{floor_text}; the best backbone run, {_run_name(best)}{random_note} ({_auc_ci_text(best)}), is "
        f"{abs(gain):.3f} {'above' if gain >= 0 else 'below'} it{tested}."
    )


FOUNDATION_GROUPS = ("self-supervised ViT", "medical foundation")


def _paired_p(best: dict, other: dict) -> str:
    from featx.classify import evaluate

    if not (_comparable(best) and _comparable(other) and dataset_key(best) == dataset_key(other)):
        return ""
    y_true, best_score = _aligned(best)
    p_value = float(evaluate.delong_paired_pvalue(y_true, best_score, _aligned(other)[1]))
    return "" if math.isnan(p_value) else f", paired DeLong p = {p_value:.3g}"


def foundation_sentence(runs: list[dict]) -> str | None:
    """What the best foundation-model run (self-supervised ViT or medical foundation) adds over the best ImageNet
    CNN run and over the best floor run of one dataset, in one sentence; None without a foundation run."""
    ordered = [run for run in sorted(runs, key=_sort_key) if not math.isnan(_test_auc(run))]
    best: dict[str, dict] = {}
    for run in ordered:
        group = backbone_group(run)
        key = "foundation" if group in FOUNDATION_GROUPS else group
        best.setdefault(key, run)
    if "foundation" not in best:
        return None
    top = best["foundation"]
    random_note = ", random-init" if run_is_random(top) else ""
    parts = []
    for key, what in (("ImageNet CNN", "the best ImageNet CNN"), ("floor", "the floor")):
        other = best.get(key)
        if other is None:
            parts.append(f"no {what.removeprefix('the ')} run to compare")
            continue
        gain = _test_auc(top) - _test_auc(other)
        parts.append(
            f"{gain:+.3f} AUC against {what} {_run_name(other)} ({_auc_ci_text(other)}{_paired_p(top, other)})"
        )
    return (
        f"Foundation models: the best, {_run_name(top)}{random_note} ({backbone_group(top)}, "
        f"{_auc_ci_text(top)}), is {' and '.join(parts)}."
    )


def split_level_sentence(runs: list[dict]) -> str | None:
    """The top run's configuration under patient-grouped vs plain image CV, in one sentence (None without the audit)."""
    for run in sorted(runs, key=_sort_key):
        levels = (run.get("audit") or {}).get("split_levels") or {}
        patient = _number((levels.get("patient") or {}).get("auc_mean"))
        image = _number((levels.get("image") or {}).get("auc_mean"))
        if patient is not None and image is not None:
            return (
                f"Split level: the top run's configuration ({_run_name(run)}) scores CV AUC {fmt(patient)} with "
                f"patient-grouped folds and {fmt(image)} with plain image folds ({image - patient:+.3f}): what a "
                "random image split would have reported."
            )
    return None


def dataset_sentences(runs: list[dict]) -> dict[str, list[str]]:
    """Per dataset key, the lines its leaderboard carries: the raw-pixel floor, the metadata-only floor (with its
    warning when it comes close to the image models) and the split level when audited."""
    from featx.results.validation import metadata_floor_sentence

    by_dataset: dict[str, list[dict]] = {}
    for run in runs:
        by_dataset.setdefault(dataset_key(run), []).append(run)
    return {
        key: [
            sentence
            for sentence in (
                pixel_floor_sentence(members),
                metadata_floor_sentence(members),
                foundation_sentence(members),
                split_level_sentence(members),
            )
            if sentence
        ]
        for key, members in by_dataset.items()
    }


def run_is_random(run) -> bool:
    return bool(run.get("random_weights", run.get("weights") == "random"))


# ---------------------------------------------------------------- formatting


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_auc(value, ci_low=None, ci_high=None, sep: str = " ") -> str:
    """'0.912 [0.871–0.945]': the one text of an AUC and its CI (tables, markdown, report, heatmap cells, legends).

    The point and both bounds are rounded to the same AUC_DIGITS, so a point inside its interval
    never prints outside it. `sep` goes between the point and the bracket (a newline in heatmap cells).
    """
    point = _number(value)
    if point is None or math.isnan(point):
        return "–"
    low, high = _number(ci_low), _number(ci_high)
    text = fmt(point, AUC_DIGITS)
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text
    return f"{text}{sep}[{fmt(low, AUC_DIGITS)}–{fmt(high, AUC_DIGITS)}]"


def format_auc_ci(row) -> str:
    return format_auc(row["test_auc"], row["test_auc_ci_low"], row["test_auc_ci_high"])


def format_cv(row) -> str:
    if row["cv_auc_mean"] is None:
        return "–"
    return f"{fmt(row['cv_auc_mean'])} ± {fmt(row['cv_auc_std'])}"


def format_params(params: dict | None) -> str:
    """'C=0.01, class_weight=balanced': the one text of best params (tables, markdown, report).

    The last part of scikit-learn's 'step__param' names; numbers in their shortest form.
    """
    if not params:
        return "–"
    return ", ".join(f"{key.split('__')[-1]}={_param_text(value)}" for key, value in sorted(params.items()))


def _param_text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_mark(row) -> str:
    if row["not_worse_than_best"] is None:
        return "n/a"
    return BEST_MARK if row["not_worse_than_best"] else ""


def weights_label(row) -> str:
    return "RANDOM-INIT" if row["random_weights"] else str(row["weights"] or "?")


def format_seconds(value) -> str:
    return "–" if value is None else f"{value:.1f}"


TABLE_HEADERS = (
    "#",
    "backbone",
    "pooling",
    "classifier",
    "weights",
    "CV AUC (mean ± sd)",
    "test AUC [95% CI]",
    "≈ best",
    "sens",
    "spec",
    "acc",
    "fit s",
    "best params",
)


def table_cells(row) -> list[str]:
    return [
        str(row["rank"]),
        row["features"],
        row["pooling"],
        row["classifier"],
        weights_label(row),
        format_cv(row),
        format_auc_ci(row),
        format_mark(row),
        fmt(row["sensitivity"]),
        fmt(row["specificity"]),
        fmt(row["accuracy"]),
        format_seconds(row["fit_s"]),
        format_params(row["best_params"]),
    ]


TERMINAL_CV_HEADER = "CV AUC ±sd"


@dataclass(frozen=True)
class _TerminalLayout:
    """Which columns a terminal table shows; `compact` merges backbone/pooling/classifier into one `run` cell."""

    columns: tuple[str, ...]  # TABLE_HEADERS names, or "run" (compact)
    compact: bool = False
    stacked: bool = False  # last resort for a very narrow terminal: the run cell on several lines


def _terminal_cells(rows: list[dict]) -> list[dict[str, str]]:
    """Each row's cell texts by column name, as the terminal shows them (CV with the compact ±)."""
    several_poolings = len({r["pooling"] for r in rows}) > 1
    out = []
    for row in rows:
        cells = dict(zip(TABLE_HEADERS, table_cells(row)))
        cells["CV AUC (mean ± sd)"] = cells["CV AUC (mean ± sd)"].replace(" ± ", "±")
        parts = [row["features"], *([row["pooling"]] if several_poolings else []), row["classifier"]]
        cells["run"] = "/".join(parts)
        cells["run (stacked)"] = "\n".join(parts)
        mark = cells["≈ best"]
        cells["test AUC (marked)"] = (
            f"{cells['test AUC [95% CI]']} {mark}" if mark and mark != "n/a" else cells["test AUC [95% CI]"]
        )
        out.append(cells)
    return out


def _terminal_header(name: str, rows: list[dict]) -> str:
    if name == "CV AUC (mean ± sd)":
        return TERMINAL_CV_HEADER
    if name in ("run", "run (stacked)"):
        several_poolings = len({r["pooling"] for r in rows}) > 1
        return "backbone/pooling/classifier" if several_poolings else "backbone/classifier"
    if name == "test AUC (marked)":
        return f"test AUC [95% CI] {BEST_MARK}"
    return name


def _terminal_table(rows: list[dict], cells: list[dict[str, str]], layout: _TerminalLayout):
    """The rich table of one dataset for `layout`: no cell wraps (but best params) and none is cut."""
    from rich import box
    from rich.table import Table

    table = Table(
        title="featx leaderboard (sorted by test ROC AUC)",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,  # two spaces between columns, not three
    )
    for name in layout.columns:
        numeric = name in ("#", "sens", "spec", "acc", "fit s")
        wrap = name == "best params"
        table.add_column(
            _terminal_header(name, rows), justify="right" if numeric else "left", overflow="fold", no_wrap=not wrap
        )
    for row, row_cells in zip(rows, cells):
        texts = dict(row_cells)
        if row["random_weights"]:
            texts["weights"] = "[bold red]RANDOM-INIT[/bold red]"
        table.add_row(*(texts[name] for name in layout.columns), style="red" if row["random_weights"] else None)
    return table


def _table_width(rows: list[dict], cells: list[dict[str, str]], layout: _TerminalLayout) -> int:
    """The width _terminal_table(layout) takes with no cell wrapped: each column's widest line, two spaces
    between columns (rich's measurement of the table, without rendering it once per layout tried)."""
    from rich.cells import cell_len

    def widest(name: str) -> int:
        texts = [_terminal_header(name, rows), *(c[name] for c in cells)]
        return max(cell_len(line) for text in texts for line in text.splitlines() or [""])

    return sum(widest(name) for name in layout.columns) + 2 * (len(layout.columns) - 1)


def terminal_layout(rows: list[dict], cells: list[dict[str, str]], console) -> _TerminalLayout:
    """The widest layout whose table fits the console without wrapping or cutting any cell.

    First every column, dropping what is least needed: a column with the same value on every
    row (one pooling, one kind of weights: the banner says which), best params, fit time, the
    ≈ best column when nothing is marked. Then the compact layout for narrow terminals (80
    columns: logs, pipes): backbone, pooling and classifier in one `run` cell on one line, the
    ≈ best mark after the test AUC, then dropping best params, fit time, acc, spec, sens, the
    rank, CV AUC and weights in that order. Only when even that does not fit (names longer than
    the terminal allows) the run cell is stacked on several lines.
    """

    def fits(layout: _TerminalLayout) -> bool:
        return _table_width(rows, cells, layout) <= console.width

    columns = list(TABLE_HEADERS)
    drops = [
        *(h for h in ("pooling", "weights") if len({c[h] for c in cells}) <= 1),
        "best params",
        "fit s",
        *(("≈ best",) if not any(r.get("not_worse_than_best") for r in rows) else ()),
    ]
    layout = _TerminalLayout(tuple(columns))
    for name in [None, *drops]:
        if name is not None:
            columns.remove(name)
            layout = _TerminalLayout(tuple(columns))
        if fits(layout):
            return layout

    weights = ["weights"] if len({c["weights"] for c in cells}) > 1 else []
    compact = ["#", "run", *weights, "test AUC (marked)", "CV AUC (mean ± sd)", "sens", "spec", "acc", "fit s"]
    compact.append("best params")
    for name in [None, "best params", "fit s", "acc", "spec", "sens", "#", "CV AUC (mean ± sd)", *weights]:
        if name is not None:
            compact.remove(name)
        layout = _TerminalLayout(tuple(compact), compact=True)
        if fits(layout):
            return layout
    return _TerminalLayout(tuple(c if c != "run" else "run (stacked)" for c in compact), compact=True, stacked=True)


def _hidden_columns(layout: _TerminalLayout, cells: list[dict[str, str]]) -> list[str]:
    """The TABLE_HEADERS a layout leaves out: not those merged into the run cell or the AUC, nor a column with
    one value on every row (one pooling; one kind of weights, which the banner names)."""
    shown = set(layout.columns)
    if layout.compact:
        shown |= {"backbone", "pooling", "classifier", "≈ best", "test AUC [95% CI]"}
    shown |= {h for h in ("pooling", "weights") if len({c[h] for c in cells}) <= 1}
    return [h for h in TABLE_HEADERS if h not in shown]


def pivot(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """Feature files, classifiers, and the best row per (feature file, classifier) over poolings.

    `rows` are one dataset's (see `datasets`): a pivot never mixes datasets.
    """
    best: dict[tuple[str, str], dict] = {}
    for row in rows:  # rows are sorted best first, so the first seen wins
        key = (row["features"], row["classifier"])
        if key not in best and row["test_auc"] is not None:
            best[key] = row
    backbones = sorted({r["features"] for r in rows}, key=lambda b: _first_rank(rows, b, "features"))
    classifiers = sorted({r["classifier"] for r in rows}, key=lambda c: _first_rank(rows, c, "classifier"))
    return backbones, classifiers, best


def _first_rank(rows, value, field) -> int:
    return min(r["rank"] for r in rows if r[field] == value)


def pivot_cell(row: dict | None, show_pooling: bool) -> str:
    if row is None:
        return "–"
    text = fmt(row["test_auc"], AUC_DIGITS)
    if show_pooling:
        text += f" ({row['pooling']})"
    if row["not_worse_than_best"]:
        text += f" {BEST_MARK}"
    return text


def _backbone_label(rows, backbone) -> str:
    random = any(r["random_weights"] for r in rows if r["features"] == backbone)
    return f"{backbone} (RANDOM-INIT)" if random else backbone


# ---------------------------------------------------------------- writing


def write_leaderboard(results_dir, runs=None) -> tuple[Path, Path]:
    """results/leaderboard.csv (one machine-readable row per run) and results/leaderboard.md."""
    results_dir = Path(results_dir)
    runs = load_runs(results_dir) if runs is None else runs
    rows = leaderboard_rows(runs)
    csv_path, md_path = results_dir / "leaderboard.csv", results_dir / "leaderboard.md"
    try:
        markdown = to_markdown(rows, dataset_sentences(runs))
        for path, text in ((csv_path, to_csv(rows)), (md_path, markdown)):
            atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as error:
        raise ResultsError(
            f"Cannot write the leaderboard into '{results_dir}' ({error.strerror or error}); check its permissions."
        ) from None
    return csv_path, md_path


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        out = dict(row)
        out["best_params"] = json.dumps(row["best_params"], sort_keys=True)
        for key, value in out.items():
            if value is None:
                out[key] = ""
            elif isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, float):
                out[key] = repr(value)
        writer.writerow(out)
    return buffer.getvalue()


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _md_table(headers, body) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape(c) for c in cells) + " |" for cells in body]
    return lines


def to_markdown(rows: list[dict], sentences: Mapping[str, Sequence[str]] | None = None) -> str:
    """leaderboard.md: per dataset the table, its `sentences` (dataset_sentences: the floor, the split level), the
    pivot; then how to read it."""
    groups = datasets(rows)
    lines = ["# featx leaderboard", ""]
    if any(r["random_weights"] for r in rows):
        lines += [f"> **⚠ {RANDOM_BANNER}**", ""]
    if len(groups) > 1:
        lines += [f"> **⚠ {several_datasets_warning(len(groups))}**", ""]
    test_sources = sorted({str(r["test_source"]) for r in rows if r["test_source"]})
    if "held_out_patients" in test_sources:
        lines += [
            "> Some caches had no test rows: about 20% of their patients (a seeded hash of each patient id) "
            "were held out as the test set.",
            "",
        ]
    for group in groups:
        members = group.rows
        lines += [
            f"## {group.heading}",
            "",
            f"{len(members)} {plural(len(members), 'run')}, sorted by test ROC AUC.",
            "",
        ]
        lines += _md_table(TABLE_HEADERS, [table_cells(r) for r in members])
        lines += [line for sentence in (sentences or {}).get(group.key, ()) for line in ("", f"> {sentence}")]
        backbones, classifiers, best = pivot(members)
        show_pooling = len({r["pooling"] for r in members}) > 1
        lines += ["", "### Test AUC: backbone × classifier", ""]
        if show_pooling:
            lines += ["Best pooling per cell, named in brackets.", ""]
        lines += _md_table(
            ["backbone", *classifiers],
            [
                [_backbone_label(members, b), *(pivot_cell(best.get((b, c)), show_pooling) for c in classifiers)]
                for b in backbones
            ],
        )
        lines += [""]
    lines += [HOW_TO_READ]
    return "\n".join(lines)


def plural(count: int, word: str) -> str:
    """'run' or 'runs' for a count."""
    return word if count == 1 else f"{word}s"


def print_leaderboard(runs: list[dict], console, results_dir=None) -> None:
    """Per dataset: the ranked table and the pivot; the random-weights banner and the several-datasets warning."""
    from rich.panel import Panel

    rows = leaderboard_rows(runs)
    if any(r["random_weights"] for r in rows):
        console.print(Panel(f"[bold]⚠ {RANDOM_BANNER}[/bold]", style="bold red", expand=False))
    groups = datasets(rows)
    if len(groups) > 1:
        where = f"'{results_dir}'" if results_dir is not None else "This results folder"
        console.print(Panel(f"⚠ {several_datasets_warning(len(groups), where)}", style="bold yellow", expand=False))
    sentences = dataset_sentences(runs)
    for group in groups:
        _print_dataset(group, console, sentences.get(group.key, ()))
    console.print(
        f"{BEST_MARK} = test AUC not significantly below the best on the same test rows (paired DeLong, p ≥ {ALPHA}); "
        "sens/spec/acc at the threshold chosen on out-of-fold training predictions."
    )


def _print_dataset(group: Dataset, console, sentences: Sequence[str] = ()) -> None:
    from rich.table import Table

    rows = group.rows
    cells = _terminal_cells(rows)
    layout = terminal_layout(rows, cells, console)
    console.print(f"[bold]{group.heading}[/bold]")
    console.print(_terminal_table(rows, cells, layout))
    hidden = _hidden_columns(layout, cells)
    if hidden:
        console.print(f"(at this width {', '.join(hidden)} are in leaderboard.md and .csv)", style="dim")

    backbones, classifiers, best = pivot(rows)
    show_pooling = len({r["pooling"] for r in rows}) > 1
    grid = Table(title="test AUC: backbone × classifier" + (" (best pooling per cell)" if show_pooling else ""))
    grid.add_column("backbone", overflow="fold")  # a narrow terminal wraps a long name at its spaces ...
    for classifier in classifiers:
        grid.add_column(classifier, justify="right", no_wrap=True)  # ... never an AUC
    for backbone in backbones:
        grid.add_row(
            _backbone_label(rows, backbone), *(pivot_cell(best.get((backbone, c)), show_pooling) for c in classifiers)
        )
    console.print(grid)
    for sentence in sentences:
        console.print(sentence, highlight=False)


def leaderboard_command(results_dir, console) -> None:
    """`featx leaderboard`: read results/runs, write leaderboard.csv/.md, print the tables."""
    runs = load_runs(results_dir)
    csv_path, md_path = write_leaderboard(results_dir, runs)
    print_leaderboard(runs, console, results_dir)
    console.print(f"Written to {csv_path} and {md_path}.")
