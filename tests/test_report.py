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
