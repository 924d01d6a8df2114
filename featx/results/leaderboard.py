"""results/runs/*.json -> the leaderboard: a terminal table, leaderboard.csv and leaderboard.md.

Rows are sorted by test ROC AUC. A row is marked when its test AUC is not
significantly below the best run's on the same test images (paired DeLong
test on the stored test predictions, p >= 0.05): the honest way to say "these
are tied" when a test set has a few hundred images. Runs on random-init
weights are labelled in every table, with a banner, because their numbers say
nothing about ImageNet features.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from featx.errors import ResultsError
from featx.extract.backbones import RANDOM_BANNER
from featx.files import atomic_write_bytes
from featx.results.records import load_runs

ALPHA = 0.05
BEST_MARK = "★"
CSV_COLUMNS = (
    "rank",
    "run_id",
    "backbone",
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
    "fit_s",
    "total_s",
    "best_params",
    "feature_sha256",
    "manifest_sha256",
    "created_utc",
)

HOW_TO_READ = f"""\
## How to read this

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
  are statistically tied with the best. Only runs sharing identical test rows are compared;
  multi-class and multi-label runs are not marked.
- **Pivot**: the best test AUC per backbone × classifier (over poolings; the pooling is named
  when there is more than one).
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


def _comparison_key(run):
    """Runs are compared only when their test rows (ids and truth) are identical."""
    if run.get("task") != "binary":
        return None
    predictions = run.get("test_predictions") or {}
    ids, y_true, score = predictions.get("ids"), predictions.get("y_true"), predictions.get("score")
    if not ids or y_true is None or score is None or len(ids) != len(y_true) or len(ids) != len(score):
        return None
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    return tuple(ids[i] for i in order) + tuple(str(y_true[i]) for i in order)


def _aligned(run):
    predictions = run["test_predictions"]
    order = sorted(range(len(predictions["ids"])), key=lambda i: predictions["ids"][i])
    y_true = np.asarray([predictions["y_true"][i] for i in order], dtype=int)
    score = np.asarray([predictions["score"][i] for i in order], dtype=float)
    return y_true, score


def compare_with_best(runs: list[dict]) -> dict[str, tuple[float | None, bool | None]]:
    """run_id -> (p-value against the best run on the same test rows, not significantly worse)."""
    from featx.classify import evaluate

    groups: dict[tuple, list[dict]] = {}
    result: dict[str, tuple[float | None, bool | None]] = {}
    for run in runs:
        key = _comparison_key(run)
        if key is None or math.isnan(_test_auc(run)):
            result[run["run_id"]] = (None, None)
        else:
            groups.setdefault(key, []).append(run)
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


def leaderboard_rows(runs: list[dict]) -> list[dict]:
    """One flat row per run (the CSV columns), sorted by test AUC, best first."""
    marks = compare_with_best(runs)
    rows = []
    for rank, run in enumerate(sorted(runs, key=_sort_key), start=1):
        test = run.get("test") or {}
        auc = test.get("auc") or {}
        threshold = run.get("threshold") or {}
        timings = run.get("timings") or {}
        data = run.get("data") or {}
        p_value, not_worse = marks[run["run_id"]]
        fit_parts = [_number(timings.get(k)) for k in ("search_s", "oof_s")]
        rows.append(
            {
                "rank": rank,
                "run_id": run["run_id"],
                "backbone": run["backbone"],
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
                "fit_s": sum(fit_parts) if all(v is not None for v in fit_parts) else _number(timings.get("search_s")),
                "total_s": _number(timings.get("total_s")),
                "best_params": run.get("best_params") or {},
                "feature_sha256": run.get("feature_sha256"),
                "manifest_sha256": run.get("manifest_sha256"),
                "created_utc": run.get("created_utc"),
            }
        )
    return rows


# ---------------------------------------------------------------- formatting


def fmt(value, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_auc_ci(row) -> str:
    if row["test_auc"] is None:
        return "–"
    if row["test_auc_ci_low"] is None or row["test_auc_ci_high"] is None:
        return fmt(row["test_auc"])
    return f"{fmt(row['test_auc'])} [{fmt(row['test_auc_ci_low'])}, {fmt(row['test_auc_ci_high'])}]"


def format_cv(row) -> str:
    if row["cv_auc_mean"] is None:
        return "–"
    return f"{fmt(row['cv_auc_mean'])} ± {fmt(row['cv_auc_std'])}"


def format_params(params: dict) -> str:
    """Short form for tables: the last part of 'step__param' names."""
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
        row["backbone"],
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


def _width_needed(cells: list[list[str]], indices: list[int]) -> int:
    """Rough terminal width of a table of these columns (rich SIMPLE_HEAD box, padding 1)."""
    widths = []
    for i in indices:
        header = TABLE_HEADERS[i] if i != 5 else "CV AUC ±sd"
        widths.append(max([len(header)] + [len(line) for c in cells for line in c[i].splitlines() or [""]]) + 2)
    return sum(widths)


def _stacked_cells(cells: list[list[str]], shown: list[int]) -> tuple[list[list[str]], list[int]]:
    """For a narrow terminal: backbone, pooling and classifier stacked in one cell, the ≈best mark on the AUC."""
    backbone, pooling, classifier = (TABLE_HEADERS.index(h) for h in ("backbone", "pooling", "classifier"))
    test, mark, rank = (TABLE_HEADERS.index(h) for h in ("test AUC [95% CI]", "≈ best", "#"))
    stacked = []
    for c in cells:
        c = list(c)
        parts = [c[backbone]] + ([c[pooling]] if pooling in shown else []) + [c[classifier]]
        c[backbone] = "\n".join(parts)
        if mark in shown and c[mark] and c[mark] != "n/a":
            c[test] = f"{c[test]} {c[mark]}"
        stacked.append(c)
    keep = [i for i in shown if i not in (pooling, classifier, mark, rank)]
    return stacked, keep


def terminal_columns(rows: list[dict], cells: list[list[str]], width: int) -> list[int]:
    """Indices of the columns that fit the terminal, dropping the least needed first.

    A column with the same value on every row (one pooling, one kind of weights:
    the banner above says which) goes first, then best params and fit time.
    """
    shown = list(range(len(TABLE_HEADERS)))

    def needed(indices):
        return _width_needed(cells, indices)

    for header in ("pooling", "weights"):
        index = TABLE_HEADERS.index(header)
        if len({c[index] for c in cells}) <= 1 and needed(shown) > width:
            shown.remove(index)
    for header in ("best params", "fit s", "≈ best" if not any(r.get("not_worse_than_best") for r in rows) else ""):
        if header and needed(shown) > width:
            shown.remove(TABLE_HEADERS.index(header))
    return shown


def pivot(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """backbones, classifiers, and the best row per (backbone, classifier) over poolings."""
    best: dict[tuple[str, str], dict] = {}
    for row in rows:  # rows are sorted best first, so the first seen wins
        key = (row["backbone"], row["classifier"])
        if key not in best and row["test_auc"] is not None:
            best[key] = row
    backbones = sorted({r["backbone"] for r in rows}, key=lambda b: _first_rank(rows, b, "backbone"))
    classifiers = sorted({r["classifier"] for r in rows}, key=lambda c: _first_rank(rows, c, "classifier"))
    return backbones, classifiers, best


def _first_rank(rows, value, field) -> int:
    return min(r["rank"] for r in rows if r[field] == value)


def pivot_cell(row: dict | None, show_pooling: bool) -> str:
    if row is None:
        return "–"
    text = fmt(row["test_auc"])
    if show_pooling:
        text += f" ({row['pooling']})"
    if row["not_worse_than_best"]:
        text += f" {BEST_MARK}"
    return text


def _backbone_label(rows, backbone) -> str:
    random = any(r["random_weights"] for r in rows if r["backbone"] == backbone)
    return f"{backbone} (RANDOM-INIT)" if random else backbone


# ---------------------------------------------------------------- writing


def write_leaderboard(results_dir, runs=None) -> tuple[Path, Path]:
    """results/leaderboard.csv (one machine-readable row per run) and results/leaderboard.md."""
    results_dir = Path(results_dir)
    runs = load_runs(results_dir) if runs is None else runs
    rows = leaderboard_rows(runs)
    csv_path, md_path = results_dir / "leaderboard.csv", results_dir / "leaderboard.md"
    try:
        for path, text in ((csv_path, to_csv(rows)), (md_path, to_markdown(rows))):
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


def to_markdown(rows: list[dict]) -> str:
    lines = ["# featx leaderboard", ""]
    if any(r["random_weights"] for r in rows):
        lines += [f"> **⚠ {RANDOM_BANNER}**", ""]
    test_sources = sorted({str(r["test_source"]) for r in rows if r["test_source"]})
    if "held_out_patients" in test_sources:
        lines += ["> Some caches had no test rows: 20% of their patients were held out as the test set.", ""]
    lines += [f"{len(rows)} run(s), sorted by test ROC AUC.", ""]
    lines += _md_table(TABLE_HEADERS, [table_cells(r) for r in rows])
    backbones, classifiers, best = pivot(rows)
    show_pooling = len({r["pooling"] for r in rows}) > 1
    lines += ["", "## Test AUC: backbone × classifier", ""]
    if show_pooling:
        lines += ["Best pooling per cell, named in brackets.", ""]
    lines += _md_table(
        ["backbone", *classifiers],
        [
            [_backbone_label(rows, b), *(pivot_cell(best.get((b, c)), show_pooling) for c in classifiers)]
            for b in backbones
        ],
    )
    lines += ["", HOW_TO_READ]
    return "\n".join(lines)


def print_leaderboard(runs: list[dict], console) -> None:
    """The ranked table, the pivot and (when needed) the random-weights banner, on the console."""
    from rich.panel import Panel
    from rich.table import Table

    rows = leaderboard_rows(runs)
    if any(r["random_weights"] for r in rows):
        console.print(Panel(f"[bold]⚠ {RANDOM_BANNER}[/bold]", style="bold red", expand=False))
    from rich import box

    all_cells = [table_cells(row) for row in rows]
    cv_index, test_index = TABLE_HEADERS.index("CV AUC (mean ± sd)"), TABLE_HEADERS.index("test AUC [95% CI]")
    for cells in all_cells:  # compact forms for the terminal; csv/md keep the spaced ones
        cells[cv_index] = cells[cv_index].replace(" ± ", "±")
        cells[test_index] = cells[test_index].replace(", ", "–")
    shown = terminal_columns(rows, all_cells, console.width)
    merged: tuple[str, ...] = ()
    if _width_needed(all_cells, shown) > console.width:
        all_cells, shown = _stacked_cells(all_cells, shown)
        merged = ("#", "pooling", "classifier", "≈ best")
    table = Table(
        title="featx leaderboard (sorted by test ROC AUC)", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False
    )
    for index in shown:
        header = TABLE_HEADERS[index]
        numeric = header in ("#", "sens", "spec", "acc", "fit s")
        wrap = header == "best params"
        if header == "CV AUC (mean ± sd)":
            header = "CV AUC ±sd"
        if header == "backbone" and merged:
            header = "backbone\nclassifier"
        table.add_column(header, justify="right" if numeric else "left", overflow="fold", no_wrap=not wrap)
    weights_index = TABLE_HEADERS.index("weights")
    for row, cells in zip(rows, all_cells):
        style = "red" if row["random_weights"] else None
        if row["random_weights"]:
            cells[weights_index] = "[bold red]RANDOM-INIT[/bold red]"
        table.add_row(*(cells[i] for i in shown), style=style)
    console.print(table)
    hidden = [h for i, h in enumerate(TABLE_HEADERS) if i not in shown and h not in merged]
    if hidden:
        console.print(f"(narrow terminal: {', '.join(hidden)} are in leaderboard.csv / leaderboard.md)", style="dim")

    backbones, classifiers, best = pivot(rows)
    show_pooling = len({r["pooling"] for r in rows}) > 1
    grid = Table(title="test AUC: backbone × classifier" + (" (best pooling per cell)" if show_pooling else ""))
    grid.add_column("backbone")
    for classifier in classifiers:
        grid.add_column(classifier, justify="right")
    for backbone in backbones:
        grid.add_row(
            _backbone_label(rows, backbone), *(pivot_cell(best.get((backbone, c)), show_pooling) for c in classifiers)
        )
    console.print(grid)
    console.print(
        f"{BEST_MARK} = test AUC not significantly below the best on the same test rows (paired DeLong, p ≥ {ALPHA}); "
        "sens/spec/acc at the threshold chosen on out-of-fold training predictions."
    )


def leaderboard_command(results_dir, console) -> None:
    """`featx leaderboard`: read results/runs, write leaderboard.csv/.md, print the tables."""
    runs = load_runs(results_dir)
    csv_path, md_path = write_leaderboard(results_dir, runs)
    print_leaderboard(runs, console)
    console.print(f"Written to {csv_path} and {md_path}.")
