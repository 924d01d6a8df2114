"""The HTML report: every section and plot, embedded images, PNGs on disk, banners, leakage, bad input."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from cachefactory import write_cache
from rich.console import Console

from featx.classify import evaluate
from featx.cli import main
from featx.errors import ResultsError
from featx.results.report import SECTIONS, report_command, write_report

CLASSIFIERS = ("logreg", "xgboost", "dense")


def _binary_run(backbone, classifier, y, score, ids, weights="random", feature_file=None):
    threshold = 0.5
    predicted = (score >= threshold).astype(int)
    matrix = [[int(np.sum((y == t) & (predicted == p))) for p in (0, 1)] for t in (0, 1)]
    return {
        "run_id": f"{backbone}__avg__{classifier}",
        "backbone": backbone,
        "pooling": "avg",
        "classifier": classifier,
        "task": "binary",
        "classes": ["normal", "opacity"],
        "positive_class": "opacity",
        "weights": weights,
        "weights_seed": 0 if weights == "random" else -1,
        "random_weights": weights == "random",
        "feature_file": feature_file or f"features/{backbone}.h5",
        "feature_sha256": "b" * 64,
        "manifest_sha256": "a" * 64,
        "image_size": [32, 32],
        "resize_mode": "stretch",
        "config": {"cv": 3, "seed": 0, "n_jobs": 1, "threshold_rule": "youden", "val_as_test": False, "quick": False},
        "versions": {"featx": "0.1.0", "numpy": np.__version__, "scikit-learn": "1.9.1"},
        "data": {
            "n_train": 300,
            "n_test": len(y),
            "n_train_patients": 100,
            "n_test_patients": 25,
            "class_counts": {
                "train": {"normal": 80, "opacity": 220},
                "test": {"normal": int((y == 0).sum()), "opacity": int((y == 1).sum())},
            },
            "test_source": "manifest",
            "n_failed_images_dropped": 0,
        },
        "best_params": {"clf__C": 0.1},
        "cv_auc_mean": 0.9,
        "cv_auc_std": 0.02,
        "threshold": {"rule": "youden", "value": threshold, "oof_sensitivity": 0.9, "oof_specificity": 0.8},
        "test": {
            "auc": evaluate.delong_ci(y, score),
            "sensitivity": 0.9,
            "specificity": 0.8,
            "confusion_matrix": matrix,
        },
        "test_predictions": {"ids": list(ids), "y_true": y.tolist(), "score": score.tolist()},
        "timings": {"search_s": 1.0, "total_s": 1.5},
        "created_utc": "2024-01-01T00:00:00+00:00",
    }


def _write_runs(results, runs):
    (results / "runs").mkdir(parents=True, exist_ok=True)
    for run in runs:
        (results / "runs" / f"{run['run_id']}.json").write_text(json.dumps(run))


@pytest.fixture
def binary_results(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=80)
    ids = [f"test/{i:03d}.png" for i in range(80)]
    runs = []
    for b, backbone in enumerate(("tiny", "mobilenetv3small")):
        for c, classifier in enumerate(CLASSIFIERS):
            noise = rng.normal(scale=1.0 + b + c, size=len(y))
            score = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + noise)))
            runs.append(_binary_run(backbone, classifier, y, score, ids))
    results = tmp_path / "results"
    _write_runs(results, runs)
    return results


def _img_payloads(document):
    return re.findall(r"<img [^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", document)


def test_report_has_every_section_and_plot_embedded_and_on_disk(binary_results):
    path = write_report(binary_results)
    assert path == binary_results / "report.html"
    document = path.read_text()
    for key, title in SECTIONS:
        assert f"<h2 id='{key}'>{title}</h2>" in document
    payloads = _img_payloads(document)
    # heatmap + (ROC, confusion, calibration) per backbone
    assert len(payloads) == 1 + 3 * 2
    for payload in payloads:
        assert base64.b64decode(payload).startswith(b"\x89PNG\r\n\x1a\n")
    plots = sorted(p.name for p in (binary_results / "plots").glob("*.png"))
    assert plots == sorted(
        ["heatmap_test_auc.png"]
        + [f"{kind}_{b}.png" for kind in ("roc", "confusion", "calibration") for b in ("tiny", "mobilenetv3small")]
    )
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", document)
    assert "<link" not in document and "<script" not in document
    # every run is in the leaderboard table with its AUC and CI, and the legend text is in the ROC
    for run_file in (binary_results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        auc = run["test"]["auc"]
        assert f"{auc['value']:.3f} [{auc['ci_low']:.3f}–{auc['ci_high']:.3f}]" in document
        assert run["run_id"] in document


def test_random_weights_banner_shows_only_for_random_runs(binary_results, tmp_path):
    assert "RANDOM-INIT WEIGHTS" in write_report(binary_results).read_text()
    for run_file in (binary_results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        run.update(weights="imagenet", random_weights=False, weights_seed=-1)
        run_file.write_text(json.dumps(run))
    assert "RANDOM-INIT" not in write_report(binary_results, tmp_path / "other" / "r.html").read_text()


def test_leakage_is_checked_from_the_feature_files(binary_results, tmp_path):
    clean, leaky = tmp_path / "features" / "tiny.h5", tmp_path / "features" / "mobilenetv3small.h5"
    X = {"avg": np.zeros((4, 2))}
    write_cache(clean, X, [0, 1, 0, 1], ["a", "b"], ["train", "train", "test", "test"], ["p1", "p2", "p3", "p4"])
    write_cache(leaky, X, [0, 1, 0, 1], ["a", "b"], ["train", "train", "test", "test"], ["p1", "p2", "p2", "p4"])
    for run_file in (binary_results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        run["feature_file"] = str(clean if run["backbone"] == "tiny" else leaky)
        run_file.write_text(json.dumps(run))
    document = write_report(binary_results).read_text()
    assert "no patient appears in both test (2 patients) and train/val (2 patients)" in document
    assert "LEAKAGE — 1 patient(s) appear in both test and train/val (e.g. p2)" in document
    assert "no test image has the same bytes as a train/val image (sha256 of 4 files)" in document


def test_identical_image_bytes_across_splits_are_leakage_whatever_the_patient(binary_results, tmp_path):
    """The same file copied into test under another patient id: caught from the sha256 extract recorded."""
    cache = tmp_path / "features" / "tiny.h5"
    same, other = "a" * 64, "b" * 64
    write_cache(
        cache,
        {"avg": np.zeros((5, 2))},
        [0, 1, 0, 1, 1],
        ["a", "b"],
        ["train", "val", "test", "test", "test"],
        ["p1", "p2", "p3", "p4", "p5"],
        ids=["x.png", "y.png", "copy_of_x.png", "z.png", "broken.png"],
        ok=[True, True, True, True, False],
        sha256=[same, other, same, "c" * 64, other],  # the failed row takes part in no run
    )
    for run_file in (binary_results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        run["feature_file"] = str(cache)
        run_file.write_text(json.dumps(run))
    document = write_report(binary_results).read_text()
    assert "no patient appears in both test" in document
    assert (
        "LEAKAGE — 1 test image(s) have the same bytes (sha256) as a train/val image "
        "(e.g. copy_of_x.png = x.png); test AUC is optimistic." in document
    )


def test_manifest_findings_join_the_dataset_section(binary_results, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"x")
    manifest = data / "manifest.csv"
    manifest.write_text("path,label,split,patient_id\na.png,normal,train,p1\nb.png,opacity,test,p1\n")
    document = write_report(binary_results, manifest=manifest, data_root=data).read_text()
    assert "1 file(s) listed in the manifest are not under" in document
    assert "1 patient(s) appear in more than one split" in document


def test_multiclass_report_has_per_class_roc_for_the_best_run(tmp_path):
    rng = np.random.default_rng(1)
    classes = ["normal", "bacterial", "viral"]
    y = rng.integers(0, 3, size=90)
    runs = []
    for c, classifier in enumerate(("logreg", "xgboost")):
        logits = rng.normal(scale=1.0 + c, size=(90, 3)) + 2.5 * np.eye(3)[y]
        score = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        per_class = {name: evaluate.delong_ci((y == k).astype(int), score[:, k]) for k, name in enumerate(classes)}
        run = _binary_run("tiny", classifier, y, score[:, 1], [f"t{i}" for i in range(90)])
        run.update(task="multiclass", classes=classes, positive_class=None, threshold=None)
        run["test"] = {
            "auc": {"value": float(np.mean([v["value"] for v in per_class.values()])), "ci_low": None, "ci_high": None},
            "per_class_auc": per_class,
            "confusion_matrix": [[int(np.sum((y == t) & (score.argmax(1) == p))) for p in range(3)] for t in range(3)],
        }
        run["data"]["class_counts"] = {"train": [10, 10, 10], "test": [int((y == k).sum()) for k in range(3)]}
        run["test_predictions"] = {"ids": [f"t{i}" for i in range(90)], "y_true": y.tolist(), "score": score.tolist()}
        runs.append(run)
    results = tmp_path / "results"
    _write_runs(results, runs)
    document = write_report(results).read_text()
    assert len(_img_payloads(document)) == 1 + 1 + 3  # heatmap, per-class ROC, backbone ROC/confusion/calibration
    best = max(runs, key=lambda r: r["test"]["auc"]["value"])["run_id"]
    assert [p.name for p in (results / "plots").glob("roc_per_class_*.png")] == [f"roc_per_class_{best}.png"]
    assert "classes normal, bacterial, viral" in document


def test_report_command_prints_the_path_and_the_banner(binary_results):
    console = Console(record=True, width=200)
    report_command(binary_results, None, console)
    text = console.export_text()
    assert str(binary_results / "report.html") in text and "RANDOM-INIT" in text


@pytest.mark.parametrize("make_runs_dir", [False, True])
def test_empty_results_dir_is_a_results_error_saying_what_to_run(tmp_path, make_runs_dir, capsys):
    results = tmp_path / "results"
    if make_runs_dir:
        (results / "runs").mkdir(parents=True)
    with pytest.raises(ResultsError, match="featx classify"):
        write_report(results)
    assert main(["report", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert "featx classify" in err and "Traceback" not in err


# ---------------------------------------------------------------- the pixel floor, split levels, curves, audits


def _with_analyses(run, data_root, top_ids):
    """A run record carrying the efficiency and audit sections stage two writes (shapes as in the run JSON)."""
    points = [
        {
            "fraction": f,
            "from_run": f == 1.0,
            "n_patients": [n] * 3,
            "n_images": [3 * n] * 3,
            "auc": [a - 0.02, a, a + 0.02],
            "errors": [None] * 3,
            "auc_mean": a,
            "auc_std": 0.016,
            "auc_min": a - 0.02,
            "auc_max": a + 0.02,
            "n_patients_mean": float(n),
        }
        for f, n, a in ((0.1, 10, 0.7), (0.3, 30, 0.8), (1.0, 100, 0.9))
    ]
    run["efficiency"] = {"fractions": [0.1, 0.3, 1.0], "seeds": 3, "points": points, "n_fits": 6, "seconds": 1.25}
    pair = {
        "rows": [0, 1],
        "ids": top_ids,
        "splits": ["train", "test"],
        "patients": ["p1", "p9"],
        "similarity": 0.995,
        "above_threshold": True,
    }
    run["audit"] = {
        "data_root": str(data_root),
        "pooling": "avg",
        "near_duplicates": {
            "measure": "cosine similarity of mean-centred embeddings",
            "threshold": 0.99,
            "n_rows": 380,
            "dim": 1280,
            "split_pairs": [
                {"splits": ["test", "train"], "pairs": 1, "same_patient": 0},
                {"splits": ["train", "train"], "pairs": 4, "same_patient": 4},
            ],
            "n_evaluated": 80,
            "evaluated_with_duplicate_in_training": 1,
            "top_pairs": [pair],
            "seconds": 0.4,
        },
        "exact_duplicates": {
            "source": "image files",
            "skipped": None,
            "n_rows": 380,
            "n_hashed": 380,
            "duplicate_groups": 2,
            "rows_in_groups": 4,
            "split_pairs": [{"splits": ["train", "train"], "pairs": 2}],
            "examples": [{"sha256": "c" * 64, "ids": ["x.png", "y.png"], "splits": ["train", "train"]}],
            "seconds": 0.1,
        },
        "split_levels": {
            "folds": 3,
            "patient": {"method": "StratifiedGroupKFold", "auc_mean": 0.81, "auc_std": 0.03},
            "image": {
                "method": "StratifiedKFold",
                "auc_mean": 0.93,
                "auc_std": 0.01,
                "validation_images_with_patient_in_training": 0.87,
            },
            "inflation": 0.12,
            "n_fits": 3,
            "seconds": 0.5,
        },
    }
    return run


def test_report_shows_the_pixel_floor_split_levels_curves_and_audits(binary_results, tmp_path, monkeypatch):
    from PIL import Image

    from featx.results import report

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    for name in ("train/a.png", "test/b.png"):
        Image.fromarray(np.full((40, 40), 120, dtype=np.uint8)).save(data / name)
    for run_file in (binary_results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        if run["backbone"] == "mobilenetv3small":  # stands in for the raw-pixel floor
            run.update(
                backbone="pixels",
                feature_file="features/pixels.h5",
                run_id=run["run_id"].replace("mobilenetv3small", "pixels"),
                weights="none",
                random_weights=False,
                weights_seed=-1,
            )
            run_file.unlink()
            run_file = run_file.with_name(f"{run['run_id']}.json")
        top_ids = ["train/a.png", "test/b.png"] if run["backbone"] == "pixels" else ["gone/c.png", "gone/d.png"]
        run_file.write_text(json.dumps(_with_analyses(run, data, top_ids)))
    flags = {}
    for name in ("_roc_plot", "_confusion_plot", "_calibration_plot"):
        real = getattr(report, name)

        def spy(group, runs, random_weights, where, _real=real, _name=name):
            flags[(_name, group)] = random_weights
            return _real(group, runs, random_weights, where)

        monkeypatch.setattr(report, name, spy)

    document = write_report(binary_results).read_text()
    floor = re.search(r"<p class='floor'>(.*?)</p>", document).group(1)
    assert floor.startswith("Raw-pixel floor: pixels/avg/") and "paired DeLong p = " in floor
    assert "the best backbone run, tiny/avg/" in floor and ", random-init (" in floor
    assert "CV AUC, image folds" in document and "<b>+0.120</b>" in document and "87%" in document
    assert "Cost: <b>7.5 s</b> for 36 fits over 6 runs" in document and "0.700 ± 0.016" in document
    plots = {p.name for p in (binary_results / "plots").glob("*.png")}
    assert {
        "efficiency_test_auc.png",
        "near_duplicates_pixels.png",
    } <= plots and "near_duplicates_tiny.png" not in plots
    assert "<code>gone/c.png</code>" in document  # tiny's pair: files not found, so listed by id
    assert "test–train: 1" in document and "<b>2</b> groups of identical files" in document
    # the raw-pixel floor has no weights: none of its plots carries the random-weights banner
    assert {key: flag for key, flag in flags.items() if key[1] == "pixels"} == {
        (name, "pixels"): False for name in ("_roc_plot", "_confusion_plot", "_calibration_plot")
    }
    assert all(flag for key, flag in flags.items() if key[1] == "tiny")
    # images moved since classify: `featx report --data-root` finds them for the thumbnails
    for run_file in (binary_results / "runs").glob("*.json"):
        run = json.loads(run_file.read_text())
        run["audit"]["data_root"] = str(tmp_path / "moved_away")
        run_file.write_text(json.dumps(run))
    write_report(binary_results)
    assert not (binary_results / "plots" / "near_duplicates_pixels.png").exists()
    assert main(["report", "--results", str(binary_results), "--data-root", str(data)]) == 0
    assert (binary_results / "plots" / "near_duplicates_pixels.png").is_file()


def test_without_a_pixels_run_the_report_says_how_to_get_the_floor(binary_results):
    document = write_report(binary_results).read_text()
    assert "No raw-pixel floor in these runs" in document and "--no-pixels" in document
    assert "No data-efficiency curves in these runs" in document and "--train-fraction" in document


# ---------------------------------------------------------------- issue 8


def _binary_runs(classes=("normal", "opacity"), manifest="a", n=80, seed=0, backbones=("tiny",)):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    ids = [f"test/{manifest}{i:03d}.png" for i in range(n)]
    runs = []
    for backbone in backbones:
        for c, classifier in enumerate(CLASSIFIERS):
            score = 1 / (1 + np.exp(-(2.5 * (2 * y - 1) + rng.normal(scale=1.0 + c, size=n))))
            run = _binary_run(backbone, classifier, y, score, ids)
            run.update(classes=list(classes), positive_class=classes[1], manifest_sha256=manifest * 64)
            run["data"]["class_counts"] = {
                "train": {classes[0]: 80, classes[1]: 220},
                "test": {classes[0]: int((y == 0).sum()), classes[1]: int((y == 1).sum())},
            }
            runs.append(run)
    return runs


def test_runs_of_two_datasets_get_separate_tables_plots_and_a_warning(tmp_path):
    """Issue 8, case 1: the report ranked tiny on the demo's test images beside resnet50 on the user's."""
    user = _binary_runs(manifest="a", n=59, backbones=("resnet50",))
    demo = _binary_runs(manifest="d", n=87, seed=1)
    results = tmp_path / "results"
    _write_runs(results, user + demo)
    document = write_report(results).read_text()
    assert "holds runs on 2 different datasets" in document
    leaderboard_section = document.split("<h2 id='leaderboard'>")[1].split("<h2 id='heatmap'>")[0]
    assert leaderboard_section.count("<table>") == 2
    assert "Dataset 1 of 2: manifest aaaaaaaaaaaa" in leaderboard_section
    assert "Dataset 2 of 2: manifest dddddddddddd" in leaderboard_section
    first, second = leaderboard_section.split("Dataset 2 of 2")
    assert "resnet50" in first and "tiny" not in first and "tiny" in second and "resnet50" not in second
    plots = sorted(p.name for p in (results / "plots").glob("heatmap_*.png"))
    assert plots == ["heatmap_test_auc_d1.png", "heatmap_test_auc_d2.png"]
    assert {p.name for p in (results / "plots").glob("roc_*.png")} == {"roc_resnet50_d1.png", "roc_tiny_d2.png"}
    assert "Best on dataset 1: <b>resnet50__avg__" in document and "Best on dataset 2: <b>tiny__avg__" in document


def _drawn_texts(monkeypatch):
    """Every text drawn on the report's figures, and the figures, as they are rendered."""
    from matplotlib.axes import Axes

    from featx.results import report

    texts, figures = [], []
    original_text, original_render = Axes.text, report._render

    def text(self, x, y, s, *args, **kwargs):
        texts.append(s)
        return original_text(self, x, y, s, *args, **kwargs)

    def render(figure, random_weights):
        png = original_render(figure, random_weights)
        figures.append(figure)
        return png

    monkeypatch.setattr(Axes, "text", text)
    monkeypatch.setattr(report, "_render", render)
    return texts, figures


def test_heatmap_cells_round_the_auc_and_its_ci_alike(tmp_path, monkeypatch):
    """Issue 8, case 7: a heatmap cell read "0.999 [1.00–1.00]": a point estimate outside its own interval."""
    runs = _binary_runs()
    runs[0]["test"]["auc"] = {"value": 0.9994, "ci_low": 0.9982, "ci_high": 1.0, "se": 0.0006, "method": "delong"}
    results = tmp_path / "results"
    _write_runs(results, runs)
    texts, _ = _drawn_texts(monkeypatch)
    document = write_report(results).read_text()
    assert "0.999\n[0.998–1.000]" in texts
    for text in texts:
        if match := re.fullmatch(r"(\d\.\d+)\n\[(\d\.\d+)–(\d\.\d+)\]", text):
            point, low, high = match.groups()
            assert len(point) == len(low) == len(high) and float(low) <= float(point) <= float(high)
    assert "0.999 [0.998–1.000]" in document


def test_dollar_signs_in_class_and_file_names_are_drawn_literally(tmp_path, monkeypatch, capsys):
    """Issue 8, case 11: a '$' in a class name crashed the report (matplotlib read it as mathtext)."""
    runs = _binary_runs(classes=("cost $5", "opacity $_$"))
    for run in runs:
        run["feature_file"] = "features/tiny_$1.h5"
    results = tmp_path / "results"
    _write_runs(results, runs)
    _, figures = _drawn_texts(monkeypatch)
    write_report(results)
    labels = [t.get_text() for f in figures for ax in f.axes for t in ax.get_xticklabels()]
    assert "cost $5" in labels and "opacity $_$" in labels
    assert all(not t.get_parse_math() for f in figures for ax in f.axes for t in ax.get_xticklabels())
    assert main(["report", "--results", str(results)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_every_axis_label_and_title_lies_inside_its_figure(binary_results, monkeypatch):
    """Issue 8, case 13: the confusion plots' "predicted" label was cut off at the bottom edge."""
    _, figures = _drawn_texts(monkeypatch)
    write_report(binary_results)
    assert figures
    for figure in figures:
        renderer = figure._get_renderer()
        bounds = figure.bbox
        for ax in figure.axes:
            for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
                if text.get_text():
                    box = text.get_window_extent(renderer)
                    assert box.y0 >= bounds.y0 - 0.5 and box.y1 <= bounds.y1 + 0.5, text.get_text()
                    assert box.x0 >= bounds.x0 - 0.5 and box.x1 <= bounds.x1 + 0.5, text.get_text()


def test_best_params_and_counts_read_the_same_everywhere(binary_results, tmp_path):
    """Issue 8, case 13: the report showed {"clf__C": 0.1} where the leaderboard says C=0.1; "(1 runs"."""
    document = write_report(binary_results).read_text()
    assert "clf__C" not in document and "C=0.1" in document
    single = tmp_path / "single"
    _write_runs(single, [json.loads(next((binary_results / "runs").glob("*.json")).read_text())])
    console = Console(record=True, width=300)
    report_command(single, None, console)
    text = console.export_text()
    assert "(1 run;" in text and "1 runs" not in text
    assert "1 run (task binary)." in (single / "report.html").read_text()


# ---------------------------------------------------------------- issue 19: a report that reads well


def _floor_on_top_runs():
    """pixels and tiny x 3 heads on one test set; pixels/logreg is the best run, pixels/xgboost close to it."""
    runs = _binary_runs(backbones=("pixels", "tiny"))
    for run in runs:
        if run["backbone"] == "pixels":
            run.update(weights="none", random_weights=False, weights_seed=-1)
    top = next(r for r in runs if r["run_id"] == "pixels__avg__logreg")
    y = np.asarray(top["test_predictions"]["y_true"])
    score = 1 / (1 + np.exp(-(4.0 * (2 * y - 1) + np.random.default_rng(5).normal(scale=1.0, size=len(y)))))
    top["test_predictions"]["score"] = score.tolist()
    top["test"]["auc"] = evaluate.delong_ci(y, score)
    return runs


def test_best_line_says_when_the_pixel_floor_is_best_and_how_many_runs_tie_with_it(tmp_path):
    from featx.results.leaderboard import leaderboard_rows

    runs = _floor_on_top_runs()
    results = tmp_path / "results"
    _write_runs(results, runs)
    rows = leaderboard_rows(runs)
    assert rows[0]["run_id"] == "pixels__avg__logreg"
    tied = sum(1 for row in rows[1:] if row["not_worse_than_best"])
    assert 0 < tied < len(rows) - 1  # the data make some runs tie and some not
    document = write_report(results).read_text()
    best = re.search(r"<p>(\d+ runs \(task binary\)\. Best: .*?)</p>", document).group(1)
    assert "<b>pixels__avg__logreg</b>" in best and "the raw-pixel floor" in best
    assert f"{tied} other {'run is' if tied == 1 else 'runs are'} statistically tied with it" in best
    # a backbone on top: no floor wording
    for run in runs:
        if run["backbone"] == "pixels":
            run.update(backbone="resnet50", run_id=run["run_id"].replace("pixels", "resnet50"))
            run["feature_file"] = "features/resnet50.h5"
    other = tmp_path / "other"
    _write_runs(other, runs)
    best = re.search(r"<p>(\d+ runs \(task binary\)\. Best: .*?)</p>", write_report(other).read_text()).group(1)
    assert "<b>resnet50__avg__logreg</b>" in best and "floor" not in best and "statistically tied" in best


def test_leaderboard_keeps_cis_and_parameters_whole_and_the_floor_has_no_pooling(tmp_path):
    runs = _floor_on_top_runs()
    for run in runs:
        run["best_params"] = {"clf__class_weight": "balanced", "clf__n_estimators": 1000, "clf__C": 0.1}
    results = tmp_path / "results"
    _write_runs(results, runs)
    document = write_report(results).read_text()
    table = document.split("<h2 id='leaderboard'>")[1].split("</table>")[0]
    for run in runs:
        auc = run["test"]["auc"]
        ci = f"{auc['value']:.3f} [{auc['ci_low']:.3f}–{auc['ci_high']:.3f}]"
        assert f"<b class='nowrap'>{ci}</b>" in table  # the point and its CI on one line
    assert "<span class='nowrap'>class_weight=balanced</span>" in table
    assert "<span class='nowrap'>n_estimators=1000</span>" in table
    for row in re.findall(r"<tr>(.*?)</tr>", table):
        cells = re.findall(r"<td>(.*?)</td>", row)
        if cells and cells[1] == "pixels":
            assert cells[2].endswith(">—</span>") and "avg" not in cells[2]
        elif cells:
            assert cells[2] == "avg"
    assert "Pooling “—”: the raw-pixel floor pools nothing" in document


def test_provenance_says_shared_settings_once_and_never_breaks_a_parameter(tmp_path):
    runs = _floor_on_top_runs()
    runs[0]["config"] = dict(runs[0]["config"], seed=7)  # one run differs in one key
    runs[0]["best_params"] = {"clf__class_weight": "balanced"}
    results = tmp_path / "results"
    _write_runs(results, runs)
    provenance = write_report(results).read_text().split("<h2 id='provenance'>")[1]
    common = re.search(r"<p>Same for every run: (.*?)</p>", provenance).group(1)
    assert "threshold_rule=youden" in common and "<b>image size</b>" in common and "<b>resize</b>" in common
    assert "seed=" not in common
    assert provenance.count("threshold_rule=youden") == 1  # not once per row
    assert provenance.count("<span class='nowrap'>seed=7</span>") == 1
    assert provenance.count("<span class='nowrap'>seed=0</span>") == len(runs) - 1
    assert "<span class='nowrap'>class_weight=balanced</span>" in provenance
    assert "<th>image size</th>" not in provenance and "<th>config</th>" in provenance


def test_split_level_header_is_in_plain_words(binary_results, tmp_path):
    for run_file in (binary_results / "runs").glob("*.json"):
        run_file.write_text(json.dumps(_with_analyses(json.loads(run_file.read_text()), tmp_path, ["a", "b"])))
    document = write_report(binary_results).read_text()
    assert "val. images whose patient trained" not in document
    assert "validation images whose patient also had images in training" in document


def test_near_duplicate_thumbnails_group_each_pair_and_keep_file_names_whole(tmp_path, monkeypatch):
    from PIL import Image

    from featx.results import report

    names = [
        ("train/person1234_bacteria_3123_left.jpeg", "test/person1234_bacteria_3124_right.jpeg"),
        ("train/a.png", "test/b.png"),
        ("train/IM-0115-0001.jpeg", "test/NORMAL2-IM-1427-0001.jpeg"),
        ("train/c.png", "test/d.png"),
    ]
    for pair in names:
        for rel in pair:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((40, 40), 120, dtype=np.uint8)).save(tmp_path / rel)
    audit = {
        "data_root": str(tmp_path),
        "near_duplicates": {
            "top_pairs": [
                {
                    "ids": list(pair),
                    "splits": ["train", "test"],
                    "similarity": 0.99 - i / 100,
                    "above_threshold": i == 0,
                }
                for i, pair in enumerate(names)
            ]
        },
    }
    _, figures = _drawn_texts(monkeypatch)
    where = type("Where", (), {"suffix": "", "tag": ""})()
    for random_weights in (False, True):
        plot = report._near_duplicate_plot("pixels", audit, None, random_weights, where)
        assert plot is not None
    for figure in figures:
        renderer = figure._get_renderer()
        bounds = figure.bbox
        labels = {}
        for ax in figure.axes:
            label = ax.xaxis.label
            box = label.get_window_extent(renderer)
            assert bounds.x0 - 0.5 <= box.x0 and box.x1 <= bounds.x1 + 0.5 and box.y0 >= bounds.y0 - 0.5
            labels[label.get_text().replace("\n", "")] = ax
        for pair in names:
            for split, rel in zip(("train", "test"), pair):
                name = rel.split("/")[1]
                assert f"{split}{name}" in labels, f"{name} not whole under its image"
        # each pair shares a panel; the gap inside a pair is narrower than the gap between pairs
        first = [labels[f"train{names[0][0].split('/')[1]}"], labels[f"test{names[0][1].split('/')[1]}"]]
        second_left = labels[f"train{names[1][0].split('/')[1]}"]
        assert first[0].get_figure(root=False) is first[1].get_figure(root=False)
        assert first[0].get_figure(root=False) is not second_left.get_figure(root=False)
        inside = first[1].get_window_extent(renderer).x0 - first[0].get_window_extent(renderer).x1
        between = second_left.get_window_extent(renderer).x0 - first[1].get_window_extent(renderer).x1
        assert 0 <= inside < between
        assert max(t.get_fontsize() for t in (first[0].xaxis.label, first[1].xaxis.label)) >= 8
