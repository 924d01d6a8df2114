"""Stage two end to end on caches written by tests/cachefactory.py (no images, no backbone)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import h5py
import joblib
import numpy as np
import pytest
from cachefactory import signal_dataset, write_cache, write_signal_cache
from rich.console import Console
from sklearn.metrics import roc_auc_score

from featx.classify import evaluate
from featx.classify.scoring import predict_scores
from featx.classify.stage import ClassifyConfig
from featx.cli import main
from featx.extract.store import read_header
from featx.results.finish import classify_command, classify_runs

RUN_FIELDS = [
    "run_id",
    "backbone",
    "pooling",
    "classifier",
    "task",
    "classes",
    "positive_class",
    "weights",
    "weights_seed",
    "random_weights",
    "feature_file",
    "feature_sha256",
    "manifest_sha256",
    "image_size",
    "resize_mode",
    "config",
    "versions",
    "data",
    "grid",
    "cv_results",
    "best_params",
    "cv_auc_mean",
    "cv_auc_std",
    "threshold",
    "test",
    "test_predictions",
    "efficiency",
    "audit",
    "timings",
    "bundle_sha256",
    "feature_path",
    "created_utc",
]
VERSION_KEYS = {"featx", "python", "numpy", "scikit-learn", "xgboost", "tensorflow", "keras", "h5py"}
BUNDLE_KEYS = {
    "format",
    "featx_version",
    "run_id",
    "estimator",
    "task",
    "classes",
    "positive_class",
    "threshold",
    "backbone",
    "pooling",
    "weights",
    "weights_seed",
    "weights_sha256",
    "image_size",
    "resize_mode",
    "dicom_window",
    "preprocess",
    "feature_sha256",
    "manifest_sha256",
}


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200, color_system=None)


def config_for(features, out, **overrides) -> ClassifyConfig:
    settings = dict(
        features_dir=Path(features),
        out_dir=Path(out),
        backbones=None,
        classifiers=("logreg",),
        poolings=None,
        cv=3,
        seed=0,
        n_jobs=1,
        threshold_rule="youden",
        val_as_test=False,
        quick=True,
    )
    settings.update(overrides)
    return ClassifyConfig(**settings)


def load_json(path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def binary_results(tmp_path_factory):
    """Two backbones of one manifest, logreg + xgboost, with a spy on every grouped split made."""
    root = tmp_path_factory.mktemp("binary")
    features = root / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=1)
    write_signal_cache(features / "tinyb.h5", backbone="tinyb", seed=0, feature_seed=2, weights="imagenet")
    calls = []
    real = evaluate.grouped_splits

    def spy(y, groups, n_splits, seed=0, classes=None):
        splits = real(y, groups, n_splits, seed, classes=classes)
        calls.append((np.asarray(groups).copy(), splits))
        return splits

    console = quiet_console()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "grouped_splits", spy)
        config = config_for(features, root / "results", classifiers=("logreg", "xgboost"))
        classify_command(config, console)
    return {
        "root": root,
        "features": features,
        "results": root / "results",
        "calls": calls,
        "console": console.file.getvalue(),
    }


def test_every_run_writes_json_and_bundle(binary_results):
    runs = sorted(p.name for p in (binary_results["results"] / "runs").glob("*.json"))
    assert runs == [f"{b}__avg__{c}.json" for b in ("tiny", "tinyb") for c in ("logreg", "xgboost")]
    models = sorted(p.name for p in (binary_results["results"] / "models").glob("*.joblib"))
    assert models == [name.replace(".json", ".joblib") for name in runs]


def test_run_json_has_every_schema_field(binary_results):
    run = load_json(binary_results["results"] / "runs" / "tiny__avg__xgboost.json")
    for field in RUN_FIELDS:
        assert field in run, field
    assert set(run["versions"]) >= VERSION_KEYS and run["versions"]["scikit-learn"]
    assert run["task"] == "binary" and run["positive_class"] == "PNEUMONIA"
    assert run["random_weights"] is True and run["weights"] == "random"
    assert run["feature_sha256"] == __import__("featx.files").files.file_sha256(binary_results["features"] / "tiny.h5")
    assert run["data"]["test_source"] == "manifest"
    assert run["data"]["n_test"] == 60 and run["data"]["n_train"] + run["data"]["n_test"] == len(
        h5py.File(binary_results["features"] / "tiny.h5")["ids"]
    )
    assert run["config"] == {
        "cv": 3,
        "seed": 0,
        "n_jobs": 1,
        "threshold_rule": "youden",
        "val_as_test": False,
        "quick": True,
        "subgroups": [],
        "age_bands": [0.0, 18.0, 40.0, 65.0],
        "subgroup_min": 10,
        "train_fractions": [],
        "efficiency_seeds": 3,
        "image_cv": True,
        "near_duplicate_threshold": 0.99,
        "engine": "local",
    }
    assert run["subgroups"] is None and run["test_predictions"]["meta"] == {}
    best = run["cv_results"]["rank_test_score"].index(1)
    assert run["cv_auc_mean"] == pytest.approx(run["cv_results"]["mean_test_score"][best])
    assert run["cv_results"]["params"][best] == run["best_params"]
    assert set(run["timings"]) >= {"search_s", "refit_s", "predict_s", "total_s", "n_fits"}
    assert run["timings"]["n_fits"] >= 4  # one candidate x 3 folds + refit
    assert set(run["threshold"]) == {"rule", "value", "oof_sensitivity", "oof_specificity"}


def test_test_auc_is_the_auc_of_the_stored_predictions_with_a_bracketing_ci(binary_results):
    for path in (binary_results["results"] / "runs").glob("*.json"):
        run = load_json(path)
        predictions = run["test_predictions"]
        auc = run["test"]["auc"]
        assert auc["value"] == pytest.approx(roc_auc_score(predictions["y_true"], predictions["score"]))
        assert auc["ci_low"] < auc["value"] < auc["ci_high"]
        assert auc["value"] > 0.75, "the signal in the cache should be found"
        assert len(predictions["ids"]) == len(set(predictions["ids"])) == run["data"]["n_test"]


def test_imagenet_cache_is_not_marked_random(binary_results):
    run = load_json(binary_results["results"] / "runs" / "tinyb__avg__logreg.json")
    assert run["random_weights"] is False and run["weights"] == "imagenet"


def test_bundle_reloads_and_predicts_the_stored_test_scores(binary_results):
    from featx.extract import store

    for classifier in ("logreg", "xgboost"):
        run = load_json(binary_results["results"] / "runs" / f"tiny__avg__{classifier}.json")
        bundle = joblib.load(binary_results["results"] / "models" / f"tiny__avg__{classifier}.joblib")
        assert set(bundle) == BUNDLE_KEYS
        assert bundle["threshold"] == run["threshold"]["value"]
        assert bundle["classes"] == ["NORMAL", "PNEUMONIA"] and bundle["backbone"] == "tiny"
        assert bundle["feature_sha256"] == run["feature_sha256"]
        features = store.load(binary_results["features"] / "tiny.h5", "avg")
        row_of = {identifier: i for i, identifier in enumerate(features.ids)}
        rows = [row_of[i] for i in run["test_predictions"]["ids"]]
        scores = predict_scores(bundle["estimator"], features.X[rows], bundle["task"])
        np.testing.assert_allclose(scores, run["test_predictions"]["score"], rtol=1e-6, atol=1e-9)


def test_no_patient_is_on_both_sides_of_any_fold(binary_results):
    calls = binary_results["calls"]
    assert len(calls) >= 4
    for groups, splits in calls:
        assert len(splits) == 3
        for fit_rows, score_rows in splits:
            assert not set(groups[fit_rows]) & set(groups[score_rows])
            assert len(fit_rows) + len(score_rows) == len(groups)


def test_classify_command_writes_and_prints_the_leaderboard(binary_results):
    rows = list(csv.DictReader((binary_results["results"] / "leaderboard.csv").open()))
    assert len(rows) == 4
    aucs = [float(r["test_auc"]) for r in rows]
    assert aucs == sorted(aucs, reverse=True)
    assert "RANDOM-INIT WEIGHTS" in binary_results["console"]
    assert "leaderboard.md" in binary_results["console"]


def test_threshold_and_model_choice_do_not_depend_on_test_labels(tmp_path):
    data = signal_dataset(seed=4)
    is_test = np.asarray(data["split"]) == "test"
    flipped = data["y"].copy()
    flipped[is_test] = 1 - flipped[is_test]
    runs = []
    for name, y in (("original", data["y"]), ("flipped", flipped)):
        features = tmp_path / name / "features"
        write_cache(features / "tiny.h5", {"avg": data["X"]}, y, data["classes"], data["split"], data["patient_id"])
        config = config_for(features, tmp_path / name / "results", quick=False)
        [path] = classify_runs(config, quiet_console())
        runs.append(load_json(path))
    original, perturbed = runs
    assert original["threshold"] == perturbed["threshold"]
    assert original["best_params"] == perturbed["best_params"]
    assert original["cv_results"]["mean_test_score"] == perturbed["cv_results"]["mean_test_score"]
    assert original["test_predictions"]["score"] == perturbed["test_predictions"]["score"]
    assert original["test"]["auc"]["value"] == pytest.approx(1 - perturbed["test"]["auc"]["value"])


def test_cache_without_test_rows_holds_out_patients_and_says_so(tmp_path):
    data = signal_dataset(n_test=0, n_train_patients=80, seed=2)
    features = tmp_path / "features"
    write_cache(features / "tiny.h5", {"avg": data["X"]}, data["y"], data["classes"], data["split"], data["patient_id"])
    console = quiet_console()
    [path] = classify_runs(config_for(features, tmp_path / "results"), console)
    run = load_json(path)
    assert run["data"]["test_source"] == "held_out_patients"
    assert console.file.getvalue().count("holding out 20% of its patients") == 1
    n_test = run["data"]["n_test_patients"]
    assert 8 <= n_test <= 24 and run["data"]["n_train_patients"] == 80 - n_test  # about 20% of 80, by a hash draw
    patient_of = dict(zip([f"img_{i:05d}.png" for i in range(len(data["y"]))], data["patient_id"]))
    test_patients = {patient_of[i] for i in run["test_predictions"]["ids"]}
    assert len(test_patients) == n_test
    assert run["data"]["n_train"] + run["data"]["n_test"] == len(data["y"])
    # the audit sees the split the run used: the held-out patients are its test split
    near = run["audit"]["near_duplicates"]
    assert {tuple(entry["splits"]) for entry in near["split_pairs"]} == {
        ("test", "test"),
        ("test", "train"),
        ("train", "train"),
    }
    assert near["n_evaluated"] == run["data"]["n_test"]


def test_every_run_carries_its_audit(binary_results):
    for path in (binary_results["results"] / "runs").glob("*.json"):
        run = load_json(path)
        audit = run["audit"]
        near, exact, levels = audit["near_duplicates"], audit["exact_duplicates"], audit["split_levels"]
        assert near["n_rows"] == run["data"]["n_train"] + run["data"]["n_test"] and near["threshold"] == 0.99
        assert near["n_evaluated"] == run["data"]["n_test"] and len(near["top_pairs"]) == 12
        assert exact["source"] == "cache" and exact["n_hashed"] == near["n_rows"] and exact["duplicate_groups"] == 0
        assert near["method"] == "exact"  # small sets: every pair compared
        if run["classifier"] != "logreg":  # the image-level CV audit runs by default where fits are cheap
            assert levels is None and "--image-cv-all" in audit["split_levels_skipped"]
            assert "image_cv_s" not in run["timings"]
            continue
        assert levels["folds"] == 3 and len(levels["image"]["fold_auc"]) == 3
        assert levels["image"]["validation_images_with_patient_in_training"] > 0.5  # 2-3 images per patient
        assert run["timings"]["image_cv_s"] == levels["seconds"] and "efficiency_s" not in run["timings"]
        if run["classifier"] == "logreg":  # deterministic fits on the search's own folds: the run's CV AUC
            assert levels["patient"]["auc_mean"] == pytest.approx(run["cv_auc_mean"])


def test_exact_duplicates_come_from_the_cache_hashes_or_else_from_the_files(tmp_path):
    data = signal_dataset(n_train_patients=30, n_test=20, seed=6)
    n = len(data["y"])
    ids = [f"img_{i:05d}.png" for i in range(n)]
    leaked = data["split"].index("test")  # a test image whose file is byte-identical to training image 0
    sha256 = [f"{i:064x}" for i in range(n)]
    sha256[leaked] = sha256[0]
    args = (data["y"], data["classes"], data["split"], data["patient_id"])
    write_cache(tmp_path / "f" / "tiny.h5", {"avg": data["X"]}, *args, ids=ids, sha256=sha256)
    run = load_json(classify_runs(config_for(tmp_path / "f", tmp_path / "r", image_cv=False), quiet_console())[0])
    exact = run["audit"]["exact_duplicates"]
    assert exact["source"] == "cache" and exact["split_pairs"] == [{"splits": ["test", "train"], "pairs": 1}]
    assert exact["examples"][0]["ids"] == [ids[0], ids[leaked]]
    # a cache without per-image hashes: the files under its data root are hashed instead
    root = tmp_path / "images"
    root.mkdir()
    for i, name in enumerate(ids):
        (root / name).write_bytes(b"same" if i in (0, leaked) else str(i).encode())
    write_cache(tmp_path / "g" / "tiny.h5", {"avg": data["X"]}, *args, ids=ids, sha256=[""] * n, data_root=str(root))
    run = load_json(classify_runs(config_for(tmp_path / "g", tmp_path / "s", image_cv=False), quiet_console())[0])
    exact = run["audit"]["exact_duplicates"]
    assert exact["source"] == "image files" and exact["split_pairs"] == [{"splits": ["test", "train"], "pairs": 1}]


def test_train_fractions_add_a_curve_from_the_chosen_configuration_without_a_new_search(tmp_path, monkeypatch):
    from featx.classify import registry

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=4, feature_seed=5)
    searches = []
    real = registry.make_search

    def counted(*args, **kwargs):
        searches.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "make_search", counted)
    config = config_for(
        features,
        tmp_path / "results",
        classifiers=("logreg", "xgboost"),
        train_fractions=(0.2, 0.5, 1.0),
        efficiency_seeds=2,
        image_cv=False,
    )
    paths = classify_runs(config, quiet_console())
    assert searches == ["logreg", "xgboost"]  # one search per run; the curve only re-fits
    for path in paths:
        run = load_json(path)
        curve = run["efficiency"]
        assert [p["fraction"] for p in curve["points"]] == [0.2, 0.5, 1.0] and curve["n_fits"] == 4
        assert curve["points"][-1]["auc"] == [run["test"]["auc"]["value"]]
        assert curve["points"][-1]["n_patients"] == [run["data"]["n_train_patients"]]
        assert all(len(p["auc"]) == 2 and p["auc_mean"] is not None for p in curve["points"][:-1])
        assert run["config"]["train_fractions"] == [0.2, 0.5, 1.0] and run["timings"]["efficiency_s"] > 0
        assert run["audit"]["split_levels"] is None and "image_cv_s" not in run["timings"]


def test_val_rows_join_train_unless_val_as_test(tmp_path):
    data = signal_dataset(val_patients=10, n_test=30, seed=3)
    features = tmp_path / "features"
    write_cache(features / "tiny.h5", {"avg": data["X"]}, data["y"], data["classes"], data["split"], data["patient_id"])
    n_val = data["split"].count("val")
    merged = load_json(classify_runs(config_for(features, tmp_path / "merged"), quiet_console())[0])
    separate = load_json(
        classify_runs(config_for(features, tmp_path / "separate", val_as_test=True), quiet_console())[0]
    )
    assert merged["data"]["n_test"] == 30
    assert separate["data"]["n_test"] == 30 + n_val
    assert separate["data"]["n_train"] == merged["data"]["n_train"] - n_val
    val_ids = {f"img_{i:05d}.png" for i, s in enumerate(data["split"]) if s == "val"}
    assert val_ids <= set(separate["test_predictions"]["ids"])
    assert not val_ids & set(merged["test_predictions"]["ids"])
    assert separate["config"]["val_as_test"] is True


def test_failed_images_are_dropped_and_counted(tmp_path):
    data = signal_dataset(seed=5)
    ok = np.ones(len(data["y"]), dtype=bool)
    ok[[0, 1, len(ok) - 1]] = False
    X = data["X"].copy()
    X[~ok] = 0.0
    features = tmp_path / "features"
    write_cache(features / "tiny.h5", {"avg": X}, data["y"], data["classes"], data["split"], data["patient_id"], ok=ok)
    run = load_json(classify_runs(config_for(features, tmp_path / "results"), quiet_console())[0])
    assert run["data"]["n_failed_images_dropped"] == 3
    assert run["data"]["n_train"] + run["data"]["n_test"] == len(ok) - 3
    assert f"img_{len(ok) - 1:05d}.png" not in run["test_predictions"]["ids"]


def test_multiclass_cache_runs_end_to_end(tmp_path):
    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", n_classes=3, n_train_patients=60, n_test=60, seed=6, separation=2.0)
    paths = classify_runs(
        config_for(features, tmp_path / "results", classifiers=("logreg", "xgboost")), quiet_console()
    )
    for path in paths:
        run = load_json(path)
        assert run["task"] == "multiclass" and run["threshold"] is None and run["positive_class"] is None
        scores = np.asarray(run["test_predictions"]["score"])
        assert scores.shape == (run["data"]["n_test"], 3)
        assert run["test"]["auc"]["value"] == pytest.approx(
            roc_auc_score(run["test_predictions"]["y_true"], scores, multi_class="ovr", average="macro")
        )
        assert set(run["test"]["per_class_auc"]) == {"class_0", "class_1", "class_2"}
        assert run["test"]["auc"]["value"] > 0.7


def test_multilabel_cache_runs_end_to_end(tmp_path):
    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", n_classes=3, multilabel=True, seed=7, separation=2.0)
    [path] = classify_runs(config_for(features, tmp_path / "results"), quiet_console())
    run = load_json(path)
    assert run["task"] == "multilabel"
    y_true = np.asarray(run["test_predictions"]["y_true"])
    scores = np.asarray(run["test_predictions"]["score"])
    assert y_true.shape == scores.shape == (run["data"]["n_test"], 3)
    assert run["test"]["auc"]["value"] == pytest.approx(roc_auc_score(y_true, scores, average="macro"))
    bundle = joblib.load(tmp_path / "results" / "models" / f"{run['run_id']}.joblib")
    assert bundle["task"] == "multilabel" and bundle["threshold"] is None


@pytest.mark.slow
def test_dense_head_runs_end_to_end(tmp_path):
    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", seed=8)
    [path] = classify_runs(config_for(features, tmp_path / "results", classifiers=("dense",)), quiet_console())
    run = load_json(path)
    assert run["classifier"] == "dense" and run["test"]["auc"]["value"] > 0.7
    bundle = joblib.load(tmp_path / "results" / "models" / "tiny__avg__dense.joblib")
    features_X = h5py.File(features / "tiny.h5")["embeddings"]["avg"][:]
    ids = [f"img_{i:05d}.png" for i in range(len(features_X))]
    rows = [ids.index(i) for i in run["test_predictions"]["ids"]]
    np.testing.assert_allclose(
        predict_scores(bundle["estimator"], features_X[rows], "binary"), run["test_predictions"]["score"], rtol=1e-5
    )


# ---------------------------------------------------------------- bad input


def small_cache(path, **kwargs):
    defaults = dict(n_train_patients=12, n_test=8, dim=4)
    defaults.update(kwargs)
    return write_signal_cache(path, **defaults)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["classify", "--classifier", "logreg", "--quick", "--cv", "3", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_sentence(err: str, *fragments: str) -> None:
    assert err.startswith("featx: error: "), err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_empty_features_folder_says_how_to_make_features(tmp_path, capsys):
    (tmp_path / "features").mkdir()
    code, err = run_cli(capsys, "--features", tmp_path / "features", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "No feature files", "featx extract")


def test_missing_features_folder(tmp_path, capsys):
    code, err = run_cli(capsys, "--features", tmp_path / "nowhere", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "does not exist", "featx extract")


def test_incomplete_partial_cache(tmp_path, capsys):
    data = signal_dataset(n_train_patients=12, n_test=8, dim=4)
    write_cache(
        tmp_path / "f" / "tiny.h5",
        {"avg": data["X"]},
        data["y"],
        data["classes"],
        data["split"],
        data["patient_id"],
        complete=False,
    )
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "tiny.h5.partial", "incomplete")


@pytest.mark.parametrize("defect", ["garbage", "format1", "format3", "truncated_rows"])
def test_unreadable_or_stale_cache(tmp_path, capsys, defect):
    path = tmp_path / "f" / "tiny.h5"
    if defect == "garbage":
        path.parent.mkdir()
        path.write_bytes(b"not an hdf5 file at all")
    elif defect.startswith("format"):
        small_cache(path, attrs={"format": int(defect[-1])})
    else:  # marked complete but n_done short of the rows
        small_cache(path, attrs={"n_done": 3})
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "tiny.h5", "rebuild it with `featx extract --backbone tiny", "--force`")


def test_caches_from_different_manifests_are_named(tmp_path, capsys):
    small_cache(tmp_path / "f" / "tiny.h5", backbone="tiny")
    small_cache(tmp_path / "f" / "other.h5", backbone="other", attrs={"manifest_sha256": "c" * 64})
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "different manifests", "tiny.h5", "other.h5")


def test_single_class_in_training_rows(tmp_path, capsys):
    data = signal_dataset(n_train_patients=12, n_test=8, dim=4)
    y = np.where(np.asarray(data["split"]) == "test", data["y"], 1)
    write_cache(tmp_path / "f" / "tiny.h5", {"avg": data["X"]}, y, data["classes"], data["split"], data["patient_id"])
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "single class", "PNEUMONIA")


def test_too_few_patients_for_the_folds(tmp_path, capsys):
    small_cache(tmp_path / "f" / "tiny.h5", n_train_patients=6, n_test=20)
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results", "--cv", "10")
    assert code == 2
    assert_one_sentence(err, "10 CV folds")


def test_nan_embeddings_name_the_file_and_count(tmp_path, capsys):
    data = signal_dataset(n_train_patients=12, n_test=8, dim=4)
    X = data["X"].copy()
    X[3, 1] = np.nan
    X[5, :2] = np.inf
    write_cache(tmp_path / "f" / "tiny.h5", {"avg": X}, data["y"], data["classes"], data["split"], data["patient_id"])
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results")
    assert code == 2
    assert_one_sentence(err, "tiny.h5", "3 NaN or infinite values", "2 rows")


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("--classifier", "xgbost"), ("'classifier'", "did you mean 'xgboost'")),
        (("--pooling", "averge"), ("'pooling'", "'avg'")),  # "mean" is a token pooling now (issue 15)
        (("--pooling", "max"), ("no 'max' embeddings",)),
        (("--backbone", "vgg16"), ("'backbone'", "'tiny'")),
        (("--threshold-rule", "sens95"), ("threshold_rule", "sens@0.95")),
        (("--train-fraction", "0.1,1.5"), ("--train-fraction", "(0, 1]", "'1.5'")),
        (("--near-duplicate-threshold", "2"), ("--near-duplicate-threshold", "(0, 1]")),
    ],
)
def test_unknown_names(tmp_path, capsys, args, fragments):
    small_cache(tmp_path / "f" / "tiny.h5")
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results", *args)
    assert code == 2
    assert_one_sentence(err, *fragments)


def test_results_directory_that_is_not_writable(tmp_path, capsys):
    small_cache(tmp_path / "f" / "tiny.h5")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", blocker / "results")
    assert code == 2
    assert_one_sentence(err, "not writable", "--out")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", locked)
        assert code == 2
        assert_one_sentence(err, "not writable")


def test_validation_happens_before_any_fit(tmp_path, capsys):
    """A bad second cache stops the run before the first one writes results."""
    small_cache(tmp_path / "f" / "good.h5", backbone="good")
    data = signal_dataset(n_train_patients=12, n_test=8, dim=4)
    X = data["X"].copy()
    X[0, 0] = np.nan
    write_cache(
        tmp_path / "f" / "zbad.h5",
        {"avg": X},
        data["y"],
        data["classes"],
        data["split"],
        data["patient_id"],
        backbone="zbad",
    )
    code, err = run_cli(capsys, "--features", tmp_path / "f", "--out", tmp_path / "results")
    assert code == 2 and "zbad.h5" in err
    assert not list((tmp_path / "results").glob("runs/*.json"))


def test_auc_scorer_is_nan_not_an_error_on_single_class_rows():
    from sklearn.linear_model import LogisticRegression

    from featx.classify.scoring import AUCScorer

    X = np.arange(20, dtype=float).reshape(10, 2)
    y = np.array([0, 1] * 5)
    model = LogisticRegression().fit(X, y)
    assert np.isnan(AUCScorer("binary")(model, X[:3], np.ones(3, dtype=int)))
    assert AUCScorer("binary")(model, X, y) == pytest.approx(roc_auc_score(y, model.predict_proba(X)[:, 1]))


def test_a_failing_report_does_not_lose_the_results(tmp_path, monkeypatch):
    import featx.results.report

    def broken(results_dir, out=None, **options):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(featx.results.report, "write_report", broken)
    write_signal_cache(tmp_path / "features" / "tiny.h5", n_train_patients=20, n_test=20, dim=4)
    console = quiet_console()
    classify_command(config_for(tmp_path / "features", tmp_path / "results"), console)
    out = console.file.getvalue()
    assert "report was not written" in out and "matplotlib exploded" in out
    assert (tmp_path / "results" / "runs" / "tiny__avg__logreg.json").is_file()
    assert (tmp_path / "results" / "leaderboard.csv").is_file()


@pytest.mark.realdata
def test_real_kermany_images_through_both_stages(tmp_path, kermany_train, capsys):
    """A few hundred real chest X-rays: tiny random-init backbone, then stage two via the CLI."""
    from featx.data.manifest import PATIENT_PARSERS

    picked = [p for label in ("NORMAL", "PNEUMONIA") for p in sorted((kermany_train / label).glob("*.jpeg"))[:150]]
    lines = ["path,label,split,patient_id"]
    for path in picked:
        patient = PATIENT_PARSERS["kermany"](path.name)
        lines.append(f"{path.relative_to(kermany_train)},{path.parent.name},train,{patient}")
    manifest = tmp_path / "kermany.csv"
    manifest.write_text("\n".join(lines) + "\n")
    features, results = tmp_path / "features", tmp_path / "results"
    assert (
        main(
            [
                "extract",
                "--backbone",
                "tiny",
                "--weights",
                "random",
                "--manifest",
                str(manifest),
                "--data-root",
                str(kermany_train),
                "--out",
                str(features),
                "--image-size",
                "64",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "classify",
                "--features",
                str(features),
                "--out",
                str(results),
                "--classifier",
                "logreg",
                "--quick",
                "--cv",
                "3",
            ]
        )
        == 0
    )
    run = load_json(results / "runs" / "tiny__avg__logreg.json")
    assert run["data"]["test_source"] == "held_out_patients" and run["random_weights"] is True
    assert run["data"]["n_train"] + run["data"]["n_test"] == 300
    patient_of = {line.split(",")[0]: line.split(",")[3] for line in lines[1:]}
    test_patients = {patient_of[i] for i in run["test_predictions"]["ids"]}
    train_patients = set(patient_of.values()) - test_patients
    assert (
        len(test_patients) == run["data"]["n_test_patients"] and len(train_patients) == run["data"]["n_train_patients"]
    )
    assert 0.0 <= run["test"]["auc"]["ci_low"] <= run["test"]["auc"]["value"] <= run["test"]["auc"]["ci_high"] <= 1.0
    assert "RANDOM-INIT WEIGHTS" in (results / "leaderboard.md").read_text()


def test_parallel_jobs_give_the_same_selection_threshold_and_test_scores(tmp_path):
    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=3)
    runs = {}
    for n_jobs in (1, 2):
        out = tmp_path / f"results{n_jobs}"
        classify_runs(config_for(features, out, classifiers=("xgboost",), n_jobs=n_jobs), quiet_console())
        runs[n_jobs] = load_json(out / "runs" / "tiny__avg__xgboost.json")
    assert runs[1]["best_params"] == runs[2]["best_params"]
    assert runs[1]["threshold"]["value"] == runs[2]["threshold"]["value"]
    assert np.allclose(runs[1]["test_predictions"]["score"], runs[2]["test_predictions"]["score"])


# ---------------------------------------------------------------- runs cached like embeddings


@pytest.fixture
def fits(monkeypatch):
    """Every run stage two fits, as (cache stem, classifier), through a spy on select_model."""
    from featx.classify import stage

    seen = []
    real = stage.fit_run

    def spy(plan, config, features, *args, **kwargs):
        seen.append((plan.backbone, plan.classifier))
        return real(plan, config, features, *args, **kwargs)

    monkeypatch.setattr(stage, "fit_run", spy)
    return seen


def test_unchanged_runs_are_reused_and_a_new_backbone_fits_only_its_runs(tmp_path, fits):
    features, out = tmp_path / "features", tmp_path / "results"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=1)
    config = config_for(features, out, classifiers=("logreg", "xgboost"))
    classify_runs(config, quiet_console())
    assert sorted(fits) == [("tiny", "logreg"), ("tiny", "xgboost")]
    first = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}

    fits.clear()
    console = quiet_console()
    paths = classify_runs(config, console)  # nothing changed: nothing is fitted
    assert fits == []
    assert sorted(p.name for p in paths) == sorted(first)
    assert {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")} == first
    shown = console.file.getvalue()
    assert "reused tiny__avg__logreg: inputs unchanged, CV AUC" in shown and "2 of 2 runs reused" in shown

    write_signal_cache(features / "tinyb.h5", backbone="tinyb", seed=0, feature_seed=2)
    fits.clear()
    paths = classify_runs(config, quiet_console())  # one backbone more: only its runs
    assert sorted(fits) == [("tinyb", "logreg"), ("tinyb", "xgboost")]
    assert len(paths) == 4

    fits.clear()
    classify_runs(replace(config, force=True), quiet_console())  # --force fits everything again
    assert len(fits) == 4


def test_a_changed_input_refits_only_the_runs_it_touches(tmp_path, fits):
    features, out = tmp_path / "features", tmp_path / "results"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=1)
    write_signal_cache(features / "tinyb.h5", backbone="tinyb", seed=0, feature_seed=2)
    config = config_for(features, out, classifiers=("logreg",))
    classify_runs(config, quiet_console())
    fits.clear()

    write_signal_cache(features / "tinyb.h5", backbone="tinyb", seed=0, feature_seed=5)  # re-extracted: new content
    classify_runs(config, quiet_console())
    assert fits == [("tinyb", "logreg")]

    fits.clear()
    classify_runs(replace(config, threshold_rule="sens@0.9"), quiet_console())  # a setting every run depends on
    assert sorted(fits) == [("tiny", "logreg"), ("tinyb", "logreg")]

    fits.clear()
    classify_runs(replace(config, threshold_rule="sens@0.9", n_jobs=2), quiet_console())  # how fast is not what
    assert fits == []


def test_a_run_record_carries_the_key_of_its_inputs(tmp_path):
    from featx.classify.stage import input_key

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5")
    [path] = classify_runs(config_for(features, tmp_path / "results"), quiet_console())
    run = load_json(path)
    assert run["input_key"] == input_key(run["inputs"])
    assert run["inputs"]["cache_content_sha256"] == read_header(features / "tiny.h5").attrs["content_sha256"]
    assert {"settings", "grid", "estimator", "versions", "pooling"} <= set(run["inputs"])
    assert {"cv", "seed", "threshold_rule", "image_cv", "subgroups"} <= set(run["inputs"]["settings"])


def test_a_record_without_an_input_key_is_fitted_again(tmp_path, fits):
    features, out = tmp_path / "features", tmp_path / "results"
    write_signal_cache(features / "tiny.h5")
    config = config_for(features, out)
    [path] = classify_runs(config, quiet_console())
    record = load_json(path)
    del record["input_key"]  # as written before runs were reused
    path.write_text(json.dumps(record))
    fits.clear()
    classify_runs(config, quiet_console())
    assert fits == [("tiny", "logreg")]


def test_reused_runs_read_no_embeddings_and_hash_no_file(tmp_path, monkeypatch):
    from featx.classify import stage
    from featx.extract import store

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5")
    config = config_for(features, tmp_path / "results")
    classify_runs(config, quiet_console())
    reads = []
    monkeypatch.setattr(store, "load", lambda *a, **k: reads.append(("load", a)))
    monkeypatch.setattr(stage, "file_sha256", lambda path: reads.append(("sha256", path)))
    monkeypatch.setattr(stage, "_check_finite", lambda *a: reads.append(("finite", a)))
    classify_runs(config, quiet_console())  # the key comes from the content sha256 in the cache's header
    assert reads == []


# ---------------------------------------------------------------- progress and cores


def test_one_bar_counts_every_fit_and_each_finished_run_gets_a_line(tmp_path):
    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5")
    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    classify_runs(config_for(features, tmp_path / "results", classifiers=("logreg", "xgboost")), console)
    shown = console.file.getvalue()
    assert "fits/s" in shown  # the bar's unit is fits, not runs
    assert re.search(r"fitted tiny__avg__logreg: CV AUC 0\.\d{3} ± 0\.\d{3}, test AUC 0\.\d{3}", shown)
    assert "fitted tiny__avg__xgboost: CV AUC" in shown
    assert re.search(r"CPU: \d+ of \d+ usable cores: logreg \d+ (parallel fits|fit) x \d+ BLAS thread", shown)


def test_the_rate_and_eta_show_from_the_first_finished_unit():
    from rich.progress import Progress

    from featx.progress import rate

    with Progress(auto_refresh=False) as progress:
        task_id = progress.add_task("fits", total=10)
        progress.advance(task_id, 1)
        task = progress.tasks[0]
        assert task.speed is None  # rich alone waits for a second sample
        assert rate(task) is not None and rate(task) > 0


def test_n_jobs_defaults_to_every_usable_core(tmp_path, monkeypatch):
    from featx import config as featx_config

    features, out = tmp_path / "features", tmp_path / "results"
    write_signal_cache(features / "tiny.h5")
    assert main(["classify", "--features", str(features), "--out", str(out), "--classifier", "logreg", "--quick"]) == 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert load_json(out / "runs" / "tiny__avg__logreg.json")["config"]["n_jobs"] == usable
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
        assert featx_config.usable_cores() == 3


def test_the_report_is_rewritten_only_when_a_run_changed(tmp_path):
    features, out = tmp_path / "features", tmp_path / "results"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=1)
    config = config_for(features, out)
    classify_command(config, quiet_console())
    report = out / "report.html"
    written = report.stat().st_mtime_ns

    console = quiet_console()
    classify_command(config, console)  # every run reused
    assert report.stat().st_mtime_ns == written
    assert "No run changed" in console.file.getvalue() and "featx leaderboard" in console.file.getvalue()

    write_signal_cache(features / "tinyb.h5", backbone="tinyb", seed=0, feature_seed=2)
    classify_command(config, quiet_console())  # a new backbone's run: leaderboard and report from all runs
    assert report.stat().st_mtime_ns > written
    assert "tinyb__avg__logreg" in report.read_text() and "tiny__avg__logreg" in report.read_text()


# ---------------------------------------------------------------- issue 8


def test_two_caches_of_one_backbone_get_two_runs(tmp_path, capsys):
    """Issue 8, case 2: tiny.h5 (64 px) and tiny_32px.h5 said "Wrote 2 run(s)" but left one JSON and one model."""
    features, results = tmp_path / "features", tmp_path / "results"
    small_cache(features / "tiny.h5", attrs={"image_size": [64, 64]})
    small_cache(features / "tiny_32px.h5", feature_seed=9)
    code, _ = run_cli(capsys, "--features", features, "--out", results)
    assert code == 0
    runs = sorted(p.name for p in (results / "runs").glob("*.json"))
    assert runs == ["tiny_32px__avg__logreg.json", "tiny__avg__logreg.json"]
    assert sorted(p.name for p in (results / "models").glob("*.joblib")) == [
        "tiny_32px__avg__logreg.joblib",
        "tiny__avg__logreg.joblib",
    ]
    sizes = {load_json(results / "runs" / name)["image_size"][0] for name in runs}
    assert sizes == {32, 64}
    assert {load_json(results / "runs" / name)["backbone"] for name in runs} == {"tiny"}
    text = (results / "leaderboard.md").read_text()
    assert "| tiny_32px |" in text and "| tiny |" in text


def test_a_run_of_another_feature_file_is_never_overwritten(tmp_path, capsys):
    """Issue 8, case 2: features_a/tiny.h5 and features_b/tiny.h5 into one results folder: refused before any fit."""
    results = tmp_path / "results"
    small_cache(tmp_path / "features_a" / "tiny.h5")
    small_cache(tmp_path / "features_b" / "tiny.h5", attrs={"image_size": [64, 64]})
    assert run_cli(capsys, "--features", tmp_path / "features_a", "--out", results)[0] == 0
    record = (results / "runs" / "tiny__avg__logreg.json").read_bytes()
    code, err = run_cli(capsys, "--features", tmp_path / "features_b", "--out", results)
    assert code == 2
    assert_one_sentence(err, "features_a", "features_b", "never overwritten", "--out")
    assert (results / "runs" / "tiny__avg__logreg.json").read_bytes() == record
    # the same cache again replaces its own run
    assert run_cli(capsys, "--features", tmp_path / "features_a", "--out", results)[0] == 0


def test_each_run_records_its_bundle_sha256(tmp_path, capsys):
    """Issue 8, case 15: what `featx predict` checks a bundle against before unpickling it."""
    from featx.files import file_sha256

    features, results = tmp_path / "features", tmp_path / "results"
    small_cache(features / "tiny.h5")
    assert run_cli(capsys, "--features", features, "--out", results)[0] == 0
    run = load_json(results / "runs" / "tiny__avg__logreg.json")
    assert run["bundle_sha256"] == file_sha256(results / "models" / "tiny__avg__logreg.joblib")


def test_classify_into_a_folder_of_another_dataset_warns_and_ranks_apart(tmp_path, capsys):
    """Issue 8, case 1: `make classify` into a results folder holding another dataset's runs ranked them together."""
    results = tmp_path / "results"
    small_cache(tmp_path / "user" / "resnet50.h5", backbone="resnet50")
    small_cache(tmp_path / "demo" / "tiny.h5", seed=4, attrs={"manifest_sha256": "d" * 64})
    assert run_cli(capsys, "--features", tmp_path / "user", "--out", results)[0] == 0
    console = quiet_console()
    classify_command(config_for(tmp_path / "demo", results), console)
    out = " ".join(console.file.getvalue().split())
    assert "holds runs on 2 different datasets" in out
    assert out.count("Dataset 1 of 2: manifest ") == 1 and out.count("Dataset 2 of 2: manifest ") == 1
    assert "manifest dddddddddddd, test rows" in out and "manifest aaaaaaaaaaaa, test rows" in out
    rows = list(csv.DictReader((results / "leaderboard.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "1"] and len({r["dataset"] for r in rows}) == 2


def test_image_level_cv_runs_where_cheap_unless_asked_for_everywhere():
    from featx.classify.stage import describe_audits, image_cv_runs

    default = ClassifyConfig(classifiers=("logreg", "xgboost", "dense"))
    assert [image_cv_runs(default, name) for name in default.classifiers] == [True, False, False]
    assert "for the logreg runs" in describe_audits(default)
    everywhere = ClassifyConfig(image_cv_all=True)
    assert all(image_cv_runs(everywhere, name) for name in everywhere.classifiers)
    none = ClassifyConfig(image_cv=False, image_cv_all=True)
    assert not any(image_cv_runs(none, name) for name in none.classifiers) and "--no-image-cv" in describe_audits(none)
    assert "for no run" in describe_audits(ClassifyConfig(classifiers=("xgboost",)))


def test_above_a_row_count_the_search_runs_on_whole_patients_and_the_finalist_refits_on_every_row(
    tmp_path, monkeypatch
):
    from featx.classify import registry
    from featx.classify.stage import select_model

    data = signal_dataset(n_train_patients=150, images_per_patient=(2, 3), n_test=10, dim=8, seed=4)
    train = np.asarray(data["split"]) == "train"
    X, y = np.asarray(data["X"], dtype=np.float32)[train], np.asarray(data["y"])[train]
    groups = np.asarray(data["patient_id"]).astype(str)[train]
    config = ClassifyConfig(cv=3, n_jobs=1, quick=True)
    full = select_model("logreg", "binary", data["classes"], X, y, groups, config)
    assert full.scheme["scheme"] == "full" and full.rows is None

    monkeypatch.setattr(registry, "SUBSAMPLE_ABOVE_ROWS", 100)
    monkeypatch.setattr(registry, "SUBSAMPLE_ROWS", 150)
    sub = select_model("logreg", "binary", data["classes"], X, y, groups, config)
    scheme = sub.scheme
    assert scheme["scheme"] == "patient-subsample" and scheme["refit_rows"] == len(y)
    assert 100 <= scheme["search_rows"] == len(sub.rows) <= 200 and scheme["search_patients"] < scheme["patients"]
    searched = set(groups[sub.rows])
    assert np.isin(groups, list(searched)).sum() == len(sub.rows)  # whole patients: every image of each
    held = np.concatenate([rows for _, rows in sub.splits])
    assert np.array_equal(np.sort(held), sub.rows) and np.array_equal(sub.search.oof_rows_, sub.rows)
    # the finalist is refitted on every training row, not on the subsample
    assert sub.search.best_estimator_.named_steps["scale"].n_samples_seen_ == len(y)
    assert 0.0 < sub.threshold["value"] < 1.0
    # the image-level CV audit draws its folds among the searched rows only
    from featx.classify import audit

    levels = audit.split_levels(
        sub.search.best_estimator_, "binary", X, y, groups, sub.splits, sub.oof_score, 3, rows=sub.rows
    )
    assert levels["patient"]["auc_mean"] == pytest.approx(sub.search.best_score_)
    assert levels["image"]["auc_mean"] is not None


def test_the_plan_and_a_timing_probe_come_before_the_first_fit(tmp_path, monkeypatch):
    from featx.classify import stage

    features = tmp_path / "features"
    write_signal_cache(features / "tiny.h5", backbone="tiny", seed=0, feature_seed=1)
    console = quiet_console()
    classify_runs(config_for(features, tmp_path / "results", classifiers=("logreg",)), console)
    assert "Plan: 1 run(s)" in console.file.getvalue()
    assert "Estimated fitting time" not in console.file.getvalue()  # small work: no probe's fits
    monkeypatch.setattr(stage, "PROBE_MIN_ROW_FITS", 1)
    console = quiet_console()
    classify_runs(config_for(features, tmp_path / "results", classifiers=("logreg", "xgboost"), force=True), console)
    text = console.file.getvalue()
    plan, estimate, first = text.index("Plan: 2 run(s)"), text.index("Estimated fitting time"), text.index("fitted ")
    assert plan < estimate < first and "search full" in text and "Audits:" in text
    run = load_json(next((tmp_path / "results" / "runs").glob("*logreg.json")))
    assert f"logreg {run['timings']['n_fits']}" in text  # the plan's fits are the run's
    assert run["search_scheme"]["scheme"] == "full" and run["search_scheme"]["search_rows"] == run["data"]["n_train"]


def test_the_timing_estimate_weighs_each_planned_fit_by_the_rows_it_fits(tmp_path):
    # halving's early rounds fit a share of each fold: counting every fit at a fold's rows made the Kermany-sized
    # default's estimate about twice the time it took
    from featx.classify import stage

    config = config_for(tmp_path, tmp_path / "results", cv=5, quick=False, classifiers=("dense",))
    plan = stage.RunPlan(tmp_path / "x.h5", "x", "avg", "dense", n_train_rows=4672)
    sizes = stage.planned_fit_rows(plan, config)
    assert sum(count for count, _ in sizes) == stage.planned_fits(plan, config) == (12 + 4 + 1) * 5 + 1
    assert sizes[:4] == [(60, 519 * 0.8), (20, 1557 * 0.8), (5, 4672 * 0.8), (1, 4672.0)]  # the rounds, the refit
    logreg = stage.planned_fit_rows(stage.RunPlan(tmp_path / "x.h5", "x", "avg", "logreg", n_train_rows=4672), config)
    assert logreg == [(70, 4672 * 0.8), (1, 4672.0), (5, 4672 * 0.8)]  # one grid round; the image-level CV audit


def test_the_timing_probe_fits_rows_of_every_class_of_a_manifest_listed_class_by_class(tmp_path, monkeypatch):
    # Kermany's manifest lists every NORMAL image before the PNEUMONIA ones: the probe fitted the first training
    # rows, all of one class, every probe fit failed and the screen said "Estimated fitting time: about 0 s"
    from featx.classify import stage

    data = signal_dataset(n_train_patients=80, seed=0)
    train = np.asarray(data["split"]) == "train"
    X, y = np.asarray(data["X"])[train], np.asarray(data["y"])[train]
    order = np.argsort(y, kind="stable")  # one class, then the other
    X, y = X[order], y[order]
    monkeypatch.setattr(stage, "PROBE_ROWS", int(np.sum(y == y[0])))  # as many rows as the first class has
    config = config_for(tmp_path, tmp_path / "results", classifiers=("logreg", "xgboost"))
    plans = [stage.RunPlan(tmp_path / "x.h5", "x", "avg", name, n_train_rows=len(y)) for name in ("logreg", "xgboost")]
    estimate, _ = stage.timing_probe(plans, config, X, y)
    assert estimate is not None and estimate > 0
    assert stage.timing_probe(plans, config, X[y == y[0]], y[y == y[0]])[0] is None  # one class: nothing to say


def test_a_moved_project_folder_keeps_its_runs(tmp_path, fits):
    """Issue 19.1: moving the project (features and results together) must not make classify fit anything again."""
    import shutil

    project = tmp_path / "project"
    write_signal_cache(project / "features" / "tiny.h5", backbone="tiny", seed=0, feature_seed=1)
    classify_runs(config_for(project / "features", project / "results", classifiers=("logreg",)), quiet_console())
    assert fits == [("tiny", "logreg")]
    moved = tmp_path / "elsewhere" / "project"
    shutil.move(str(project), moved)
    fits.clear()
    console = quiet_console()
    classify_runs(config_for(moved / "features", moved / "results", classifiers=("logreg",)), console)
    assert fits == [] and "1 of 1 runs reused" in console.file.getvalue()
