"""The leaderboard: ranking, CI formatting, the not-worse-than-best marks, the random-weights banner."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from rich.console import Console

from featx.classify import evaluate
from featx.cli import main
from featx.errors import ResultsError
from featx.results import leaderboard

N_TEST = 120


def _scores(y, noise, seed):
    rng = np.random.default_rng(seed)
    return 1.0 / (1.0 + np.exp(-(3.0 * (2 * y - 1) + rng.normal(scale=noise, size=len(y)))))


def _run(run_id, y, score, ids, weights="imagenet", pooling="avg", cv=0.9):
    backbone, pooling_part, classifier = run_id.split("__")
    auc = evaluate.delong_ci(y, score)
    return {
        "run_id": run_id,
        "backbone": backbone,
        "pooling": pooling_part,
        "classifier": classifier,
        "task": "binary",
        "classes": ["NORMAL", "PNEUMONIA"],
        "weights": weights,
        "random_weights": weights == "random",
        "feature_sha256": "b" * 64,
        "manifest_sha256": "a" * 64,
        "data": {"n_train": 300, "n_test": len(y), "test_source": "manifest"},
        "best_params": {"clf__C": 0.01, "clf__class_weight": "balanced"},
        "cv_auc_mean": cv,
        "cv_auc_std": 0.02,
        "threshold": {"rule": "youden", "value": 0.5, "oof_sensitivity": 0.9, "oof_specificity": 0.8},
        "test": {"auc": auc, "sensitivity": 0.91, "specificity": 0.82, "accuracy": 0.88, "pr_auc": 0.9},
        "test_predictions": {"ids": list(ids), "y_true": y.tolist(), "score": score.tolist()},
        "timings": {"search_s": 2.0, "refit_s": 0.1, "oof_s": 0.5, "predict_s": 0.01, "total_s": 3.0},
        "created_utc": "2024-01-01T00:00:00+00:00",
    }


@pytest.fixture
def runs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=N_TEST)
    ids = [f"test/img_{i:04d}.png" for i in range(N_TEST)]
    best = _scores(y, noise=3.0, seed=1)
    tied = _scores(y, noise=3.3, seed=2)
    worse = rng.uniform(size=N_TEST)  # no signal: significantly below the best
    other_ids = [f"other/img_{i:04d}.png" for i in range(N_TEST)]
    return [
        _run("resnet50__avg__xgboost", y, tied, ids),
        _run("vgg16__avg__logreg", y, worse, ids, weights="random"),
        _run("resnet50__avg__logreg", y, best, ids),
        # same truth, different images: compared only with itself
        _run("densenet121__avg__logreg", y, worse, other_ids),
    ]


def _write(results, runs):
    (results / "runs").mkdir(parents=True)
    for run in runs:
        (results / "runs" / f"{run['run_id']}.json").write_text(json.dumps(run))


def test_rows_are_sorted_by_test_auc_and_marked_against_the_best_on_the_same_test_rows(runs):
    rows = leaderboard.leaderboard_rows(runs)
    # densenet121 was tested on other images: a dataset of its own, after the one with three runs
    assert [r["run_id"] for r in rows][-1] == "densenet121__avg__logreg"
    aucs = [r["test_auc"] for r in rows[:3]]
    assert aucs == sorted(aucs, reverse=True)
    assert [r["rank"] for r in rows] == [1, 2, 3, 1]
    assert len({r["dataset"] for r in rows[:3]}) == 1 and rows[3]["dataset"] != rows[0]["dataset"]
    by_id = {r["run_id"]: r for r in rows}
    assert by_id["resnet50__avg__logreg"]["rank"] == 1
    assert by_id["resnet50__avg__logreg"]["not_worse_than_best"] is True
    assert by_id["resnet50__avg__xgboost"]["not_worse_than_best"] is True
    assert by_id["resnet50__avg__xgboost"]["p_vs_best"] >= 0.05
    assert by_id["vgg16__avg__logreg"]["not_worse_than_best"] is False
    assert by_id["vgg16__avg__logreg"]["p_vs_best"] < 0.05
    # its own test set: it is the best there
    assert by_id["densenet121__avg__logreg"]["not_worse_than_best"] is True


def test_p_value_is_the_paired_delong_test_on_stored_predictions(runs):
    rows = {r["run_id"]: r for r in leaderboard.leaderboard_rows(runs)}
    best, other = runs[2], runs[0]
    expected = evaluate.delong_paired_pvalue(
        np.asarray(best["test_predictions"]["y_true"]),
        np.asarray(best["test_predictions"]["score"]),
        np.asarray(other["test_predictions"]["score"]),
    )
    assert rows[other["run_id"]]["p_vs_best"] == pytest.approx(expected)


def test_csv_has_one_machine_readable_row_per_run_in_rank_order(tmp_path, runs):
    _write(tmp_path, runs)
    csv_path, _ = leaderboard.write_leaderboard(tmp_path)
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in leaderboard.leaderboard_rows(runs)]
    assert list(rows[0]) == list(leaderboard.CSV_COLUMNS)
    top = rows[0]
    assert float(top["test_auc"]) == pytest.approx(runs[2]["test"]["auc"]["value"])
    assert float(top["test_auc_ci_low"]) == pytest.approx(runs[2]["test"]["auc"]["ci_low"])
    assert json.loads(top["best_params"]) == {"clf__C": 0.01, "clf__class_weight": "balanced"}
    assert {r["run_id"]: r["random_weights"] for r in rows}["vgg16__avg__logreg"] == "true"
    assert {r["run_id"]: r["not_worse_than_best"] for r in rows}["vgg16__avg__logreg"] == "false"
    assert float(top["fit_s"]) == pytest.approx(2.5)


def test_markdown_has_banner_ci_table_pivot_and_reading_notes(tmp_path, runs):
    _write(tmp_path, runs)
    _, md_path = leaderboard.write_leaderboard(tmp_path)
    text = md_path.read_text()
    assert leaderboard.RANDOM_BANNER in text
    assert text.index(leaderboard.RANDOM_BANNER) < text.index("| # |")
    auc = runs[2]["test"]["auc"]
    assert f"{auc['value']:.3f} [{auc['ci_low']:.3f}–{auc['ci_high']:.3f}]" in text
    assert "0.900 ± 0.020" in text
    assert "RANDOM-INIT" in text.split("| # |")[1]
    pivot = text.split("## Test AUC: backbone × classifier")[1].split("## How to read this")[0]
    assert "| backbone | logreg | xgboost |" in pivot
    assert "vgg16 (RANDOM-INIT)" in pivot
    resnet_line = next(line for line in pivot.splitlines() if line.startswith("| resnet50 |"))
    assert f"{auc['value']:.3f} ★" in resnet_line
    assert "## How to read this" in text
    assert "C=0.01, class_weight=balanced" in text


def test_no_banner_without_random_weights(tmp_path, runs):
    _write(tmp_path, [r for r in runs if not r["random_weights"]])
    _, md_path = leaderboard.write_leaderboard(tmp_path)
    assert leaderboard.RANDOM_BANNER not in md_path.read_text()


def test_pivot_names_the_best_pooling_when_several_were_run(runs):
    extra = dict(runs[2], run_id="resnet50__max__logreg", pooling="max", test=dict(runs[2]["test"]))
    extra["test"]["auc"] = dict(extra["test"]["auc"], value=0.5)
    extra["test_predictions"] = dict(runs[2]["test_predictions"], score=[0.5] * N_TEST)
    text = leaderboard.to_markdown(leaderboard.leaderboard_rows([*runs, extra]))
    pivot = text.split("## Test AUC: backbone × classifier")[1]
    resnet_line = next(line for line in pivot.splitlines() if line.startswith("| resnet50 |"))
    assert "(avg)" in resnet_line and "(max)" not in resnet_line


def test_terminal_output_has_banner_table_and_pivot(runs):
    console = Console(file=io.StringIO(), width=250, color_system=None)
    leaderboard.print_leaderboard(runs, console)
    out = console.file.getvalue()
    assert leaderboard.RANDOM_BANNER in out
    assert out.index("resnet50") < out.index("vgg16")
    assert "backbone × classifier" in out
    assert "RANDOM-INIT" in out


def test_leaderboard_command_via_cli(tmp_path, runs, capsys):
    _write(tmp_path, runs)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard.csv").is_file() and (tmp_path / "leaderboard.md").is_file()


def test_empty_results_directory_says_what_to_run(tmp_path, capsys):
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featx: error: No runs found") and "featx classify" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(ResultsError):
        leaderboard.load_runs(tmp_path / "missing")


@pytest.mark.parametrize("content", ["{not json", json.dumps({"hello": 1})])
def test_foreign_run_file_is_a_one_sentence_error(tmp_path, capsys, content):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text(content)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "x.json" in err and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("width", [80, 100, 250])
def test_terminal_table_keeps_every_auc_whole_at_any_width(runs, width):
    console = Console(file=io.StringIO(), width=width, color_system=None)
    leaderboard.print_leaderboard(runs, console)
    out = console.file.getvalue()
    assert max(len(line) for line in out.splitlines()) <= width
    for row in leaderboard.leaderboard_rows(runs):
        whole = leaderboard.format_auc_ci(row)
        assert whole in out, f"{row['run_id']}: {whole!r} cut at width {width}"
        assert row["backbone"] in out and row["classifier"] in out


def test_every_leaderboard_says_what_the_backbones_add_over_the_pixel_floor(tmp_path, runs):
    y = np.asarray(runs[0]["test_predictions"]["y_true"])
    floor = _run("pixels__avg__logreg", y, _scores(y, noise=5.0, seed=3), runs[0]["test_predictions"]["ids"])
    floor["weights"] = "none"
    best = runs[2]
    expected_p = evaluate.delong_paired_pvalue(
        y, np.asarray(best["test_predictions"]["score"]), np.asarray(floor["test_predictions"]["score"])
    )
    gain = best["test"]["auc"]["value"] - floor["test"]["auc"]["value"]
    sentence = leaderboard.pixel_floor_sentence([*runs, floor])
    assert sentence.startswith("Raw-pixel floor: pixels/avg/logreg reaches test AUC ")
    assert f"the best backbone run, resnet50/avg/logreg ({best['test']['auc']['value']:.3f} [" in sentence
    assert f"is {gain:.3f} above it (paired DeLong p = {expected_p:.3g})." in sentence
    _write(tmp_path, [*runs, floor])
    _, md_path = leaderboard.write_leaderboard(tmp_path)
    assert f"> {sentence}" in md_path.read_text()
    console = Console(file=io.StringIO(), width=400, color_system=None)
    leaderboard.print_leaderboard([*runs, floor], console)
    assert sentence in console.file.getvalue()
    without = leaderboard.pixel_floor_sentence(runs)
    assert without.startswith("No raw-pixel floor in these runs") and "--no-pixels" in without


def test_the_split_level_audit_joins_the_csv_and_the_sentence(runs):
    assert leaderboard.split_level_sentence(runs) is None
    runs[2]["audit"] = {
        "split_levels": {"patient": {"auc_mean": 0.81}, "image": {"auc_mean": 0.93}, "inflation": 0.12, "folds": 5}
    }
    rows = {r["run_id"]: r for r in leaderboard.leaderboard_rows(runs)}
    assert (
        rows["resnet50__avg__logreg"]["cv_auc_image_folds"],
        rows["resnet50__avg__logreg"]["image_split_inflation"],
    ) == (
        0.93,
        0.12,
    )
    assert rows["resnet50__avg__xgboost"]["cv_auc_image_folds"] is None
    sentence = leaderboard.split_level_sentence(runs)
    assert (
        "(resnet50/avg/logreg) scores CV AUC 0.810 with patient-grouped folds and 0.930 with plain image folds (+0.120)"
        in sentence
    )


# ---------------------------------------------------------------- issue 8


def _other_dataset_runs():
    """Two runs on another manifest's 87 test images (the demo data, say)."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=87)
    ids = [f"demo/img_{i:04d}.png" for i in range(87)]
    runs = [
        _run("tiny__avg__logreg", y, _scores(y, 1.0, 7), ids),
        _run("tiny__avg__xgboost", y, _scores(y, 1.2, 8), ids),
    ]
    for run in runs:
        run["manifest_sha256"] = "d" * 64
    return runs


def test_runs_of_different_datasets_are_never_ranked_together(tmp_path, runs):
    """Issue 8, case 1: a folder holding two datasets got one ranking, one pivot and one ★ across both."""
    same = [r for r in runs if r["run_id"] != "densenet121__avg__logreg"]
    mixed = same + _other_dataset_runs()
    rows = leaderboard.leaderboard_rows(mixed)
    groups = leaderboard.datasets(rows)
    assert [len(g.rows) for g in groups] == [3, 2]
    assert {r["run_id"] for r in groups[1].rows} == {"tiny__avg__logreg", "tiny__avg__xgboost"}
    assert all([r["rank"] for r in g.rows] == list(range(1, len(g.rows) + 1)) for g in groups)
    assert groups[1].rows[0]["not_worse_than_best"] is True  # the best of its own dataset
    assert groups[0].heading.startswith("Dataset 1 of 2: manifest aaaaaaaaaaaa, test rows ")
    assert "(120 images, from the manifest)" in groups[0].heading
    assert groups[1].heading.startswith("Dataset 2 of 2: manifest dddddddddddd")

    _write(tmp_path, mixed)
    csv_path, md_path = leaderboard.write_leaderboard(tmp_path)
    csv_rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["dataset"], r["rank"]) for r in csv_rows] == [(r["dataset"], str(r["rank"])) for r in rows]
    text = md_path.read_text()
    assert "holds runs on 2 different datasets" in text
    assert text.count("## Dataset ") == 2 and text.count("### Test AUC: backbone × classifier") == 2
    first, second = text.split("## Dataset 2 of 2")
    assert "tiny" not in first.split("## Dataset 1 of 2")[1] and "resnet50" not in second.split("## How")[0]

    console = Console(file=io.StringIO(), width=200, color_system=None)
    leaderboard.print_leaderboard(mixed, console, tmp_path)
    out = console.file.getvalue()
    assert "holds runs on 2 different datasets" in out and f"'{tmp_path}'" in " ".join(out.split())
    assert out.count("Dataset 1 of 2") == 1 and out.count("Dataset 2 of 2") == 1
    assert out.count("backbone × classifier") == 2


def test_one_dataset_is_named_in_a_heading_without_a_warning(runs):
    same = [r for r in runs if r["run_id"] != "densenet121__avg__logreg"]
    text = leaderboard.to_markdown(leaderboard.leaderboard_rows(same))
    assert "## Dataset: manifest aaaaaaaaaaaa, test rows " in text and "different datasets" not in text


def test_auc_and_ci_are_rounded_alike_so_the_point_stays_inside_its_interval():
    """Issue 8, case 7: the heatmap printed 0.999 [1.00–1.00] (AUC to 3 places, CI to 2)."""
    assert leaderboard.format_auc(0.9994, 0.9982, 1.0) == "0.999 [0.998–1.000]"
    assert leaderboard.format_auc(0.9994, 0.9982, 1.0, sep="\n") == "0.999\n[0.998–1.000]"
    assert leaderboard.format_auc(0.8, None, None) == "0.800"
    assert leaderboard.format_auc(None) == "–"


def _demo_like_runs():
    """The demo's leaderboard: the pixel floor and two random-init CNNs, one of them with a long name, x 3 heads."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=N_TEST)
    ids = [f"test/img_{i:04d}.png" for i in range(N_TEST)]
    runs = []
    for i, backbone in enumerate(("pixels", "resnet50", "mobilenetv3small")):
        for j, classifier in enumerate(("xgboost", "logreg", "dense")):
            weights = "none" if backbone == "pixels" else "random"
            run = _run(f"{backbone}__avg__{classifier}", y, _scores(y, 2.5 + i + 0.3 * j, 10 * i + j), ids, weights)
            run["cv_auc_std"] = 0.046
            runs.append(run)
    return runs


@pytest.mark.parametrize("width", [80, 100, 120, 160])
def test_terminal_table_keeps_every_cell_whole_on_one_line_at_narrow_widths(width):
    runs = _demo_like_runs()
    console = Console(file=io.StringIO(), width=width, color_system=None)
    leaderboard.print_leaderboard(runs, console)
    out = console.file.getvalue()
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in out
    note = next((line for line in lines if line.startswith("(at this width")), "")
    for row in leaderboard.leaderboard_rows(runs):
        whole = [
            leaderboard.format_auc_ci(row),
            leaderboard.format_cv(row).replace(" ± ", "±"),
            leaderboard.weights_label(row),
        ]
        # one line holds the row: its backbone and classifier unwrapped, and every value whole
        line = next((ln for ln in lines if all(text in ln for text in whole)), None)
        assert line is not None, f"{row['run_id']}: {whole} not whole on one line at width {width}:\n{out}"
        assert row["features"] in line and row["classifier"] in line, f"{row['run_id']} wrapped at width {width}"
        for header, value in (("sens", row["sensitivity"]), ("spec", row["specificity"]), ("acc", row["accuracy"])):
            assert header in note or leaderboard.fmt(value) in line, f"{header} neither shown whole nor named"
        if row["not_worse_than_best"]:
            assert leaderboard.BEST_MARK in line


def test_a_very_narrow_terminal_stacks_the_run_cell_rather_than_cutting_a_value():
    runs = _demo_like_runs()
    console = Console(file=io.StringIO(), width=50, color_system=None)
    leaderboard.print_leaderboard(runs, console)
    out = console.file.getvalue()
    for row in leaderboard.leaderboard_rows(runs):
        assert leaderboard.format_auc_ci(row) in out
