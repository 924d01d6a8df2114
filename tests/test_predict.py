"""featx predict: reproduces stage two exactly, reports unreadable images per image, refuses what it cannot rebuild."""

from __future__ import annotations

import csv
import json
import re

import joblib
import pytest
from rich.console import Console

from featx.classify.stage import ClassifyConfig
from featx.cli import main
from featx.data.synthetic import generate_phantoms
from featx.errors import BundleError, FeatxError
from featx.extract.stage import ExtractConfig, run_extract
from featx.results.finish import classify_runs
from featx.results.predict import predict_command, predict_paths
from featx.results.records import load_bundle


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny extract + classify run on phantoms: (data dir, manifest, bundle path, run JSON)."""
    root = tmp_path_factory.mktemp("predict")
    manifest = generate_phantoms(root / "data", n_patients=12, image_size=32, seed=0)
    quiet = Console(quiet=True)
    run_extract(
        ExtractConfig(
            backbones=("tiny", "pixels"),
            manifest=manifest,
            data_root=root / "data",
            out_dir=root / "features",
            weights="random",
            image_size=32,
            seed=5,
        ),
        quiet,
    )
    classify_runs(
        ClassifyConfig(
            features_dir=root / "features", out_dir=root / "results", classifiers=("logreg",), cv=2, quick=True
        ),
        quiet,
    )
    run = json.loads((root / "results" / "runs" / "tiny__avg__logreg.json").read_text())
    return root / "data", manifest, root / "results" / "models" / "tiny__avg__logreg.joblib", run


def test_predictions_reproduce_stage_two_test_probabilities_exactly(trained):
    data, manifest, bundle, run = trained
    rows = predict_paths(bundle, [manifest])  # manifest paths are relative to its folder by default
    by_path = {r["path"]: r for r in rows}
    expected = run["test_predictions"]
    got = [by_path[str(data / rel)]["p_opacity"] for rel in expected["ids"]]
    assert got == expected["score"]
    threshold = run["threshold"]["value"]
    for rel, score in zip(expected["ids"], expected["score"]):
        row = by_path[str(data / rel)]
        assert row["predicted_label"] == ("opacity" if score >= threshold else "normal")
        assert row["p_normal"] == pytest.approx(1 - score)
        assert row["error"] is None


def test_a_pixels_bundle_rebuilds_without_weights_and_reproduces_stage_two(trained):
    data, _, bundle, _ = trained
    results = bundle.parent.parent
    run = json.loads((results / "runs" / "pixels__avg__logreg.json").read_text())
    assert (run["weights"], run["random_weights"]) == ("none", False)
    images = [str(data / rel) for rel in run["test_predictions"]["ids"]]
    rows = predict_paths(results / "models" / "pixels__avg__logreg.joblib", images)
    assert [row["p_opacity"] for row in rows] == run["test_predictions"]["score"]


def test_unreadable_image_is_reported_per_image_and_others_still_predicted(trained, tmp_path):
    data, _, bundle, _ = trained
    folder = tmp_path / "new"
    folder.mkdir()
    good = sorted((data / "test").rglob("*.png"))[:2]
    for i, path in enumerate(good):
        (folder / f"ok_{i}.png").write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "preds.csv"
    console = Console(record=True, width=200)
    predict_command(bundle, [str(folder)], None, out, False, 32, console)
    rows = list(csv.DictReader(out.open()))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["broken.png", "ok_0.png", "ok_1.png"]
    broken, *ok = rows
    assert broken["error"] and broken["p_opacity"] == "" and broken["predicted_label"] == ""
    for row in ok:
        assert row["error"] == "" and 0.0 <= float(row["p_opacity"]) <= 1.0
        assert row["predicted_label"] in ("normal", "opacity") and row["weights"] == "random-init"
    text = console.export_text()
    assert "2 of 3 image(s) predicted" in text and "broken.png" in text and "RANDOM-INIT" in text


def test_json_output_to_stdout_carries_the_random_weights_warning(trained, capsys):
    data, _, bundle, _ = trained
    image = sorted((data / "train").rglob("*.png"))[0]
    assert main(["predict", "--model", str(bundle), str(image), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["random_weights"] is True and "RANDOM-INIT" in document["warning"]
    assert document["classes"] == ["normal", "opacity"]
    (row,) = document["predictions"]
    assert row["path"] == str(image) and row["p_normal"] + row["p_opacity"] == pytest.approx(1.0)


def _altered_bundle(bundle, tmp_path, **changes):
    content = joblib.load(bundle)
    content.update(changes)
    path = tmp_path / "altered.joblib"
    joblib.dump(content, path)
    return path


def test_missing_and_foreign_bundles_are_bundle_errors(tmp_path, capsys, trained):
    data = trained[0]
    image = str(sorted(data.rglob("*.png"))[0])
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope.joblib")
    garbage = tmp_path / "garbage.joblib"
    garbage.write_bytes(b"\x00\x01 definitely not a pickle")
    with pytest.raises(BundleError, match="not a featx model bundle"):
        load_bundle(garbage)
    foreign = tmp_path / "foreign.joblib"
    joblib.dump({"estimator": None}, foreign)
    with pytest.raises(BundleError, match="'format' key"):
        load_bundle(foreign)
    joblib.dump([1, 2, 3], foreign)
    with pytest.raises(BundleError, match="'format' key"):
        load_bundle(foreign)
    joblib.dump({"format": "1"}, foreign)
    with pytest.raises(BundleError, match="format '1'"):
        load_bundle(foreign)
    assert main(["predict", "--model", str(garbage), image]) == 2
    err = capsys.readouterr().err
    assert "not a featx model bundle" in err and "Traceback" not in err


def test_weights_that_cannot_be_had_are_refused_with_the_reason(trained, tmp_path, monkeypatch, offline):
    data, _, bundle, _ = trained
    image = [str(sorted(data.rglob("*.png"))[0])]
    # the tiny backbone has no ImageNet weights
    with pytest.raises(BundleError, match="no ImageNet weights|has none"):
        predict_paths(_altered_bundle(bundle, tmp_path, weights="imagenet", weights_seed=-1), image)
    # a weights file that is not there, then one whose bytes differ from the recorded hash
    missing = _altered_bundle(bundle, tmp_path, weights="tiny_custom.weights.h5", weights_sha256="ab" * 32)
    with pytest.raises(BundleError, match="tiny_custom.weights.h5.*not beside the bundle"):
        predict_paths(missing, image)
    (tmp_path / "tiny_custom.weights.h5").write_bytes(b"other bytes")
    with pytest.raises(BundleError, match="has sha256 .* identical file"):
        predict_paths(missing, image)
    # random weights without a recorded seed cannot be redrawn
    with pytest.raises(BundleError, match="records no seed"):
        predict_paths(_altered_bundle(bundle, tmp_path, weights_seed=-1), image)
    # ImageNet weights that are neither cached nor downloadable (the network is faked away)
    imagenet = _altered_bundle(
        bundle, tmp_path, backbone="mobilenetv3small", preprocess="none", weights="imagenet", weights_seed=-1
    )
    with pytest.raises(BundleError, match="cannot be rebuilt identically.*--weights random|not in"):
        predict_paths(imagenet, image)
    assert len(offline) == 1  # the download was tried once, and refused


def test_bad_inputs_are_one_sentence(trained, tmp_path):
    _, _, bundle, _ = trained
    with pytest.raises(FeatxError, match="does not exist"):
        predict_paths(bundle, [tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FeatxError, match="No images"):
        predict_paths(bundle, [tmp_path / "empty"])
    escaping = tmp_path / "m.csv"
    escaping.write_text("path\n../../etc/passwd\n")
    with pytest.raises(FeatxError, match="escapes the data root"):
        predict_paths(bundle, [escaping])


def test_a_bundle_written_before_the_layout_by_stage_still_loads(tmp_path, monkeypatch):
    """Bundles of featx <= 0.1 pickled EarlyStoppingXGB / DenseHead as featx.classifiers.<Class>."""
    import sys

    import joblib
    import numpy as np
    from sklearn.datasets import make_classification

    from featx.classify import estimators

    X, y = make_classification(n_samples=60, n_features=4, random_state=0)
    model = estimators.EarlyStoppingXGB(n_estimators=5).fit(X, y)
    with monkeypatch.context() as patch:  # pickle it under the old module path, as the old layout did
        patch.setattr(estimators.EarlyStoppingXGB, "__module__", "featx.classifiers")
        patch.setitem(sys.modules, "featx.classifiers", estimators)
        path = tmp_path / "old.joblib"
        joblib.dump(
            {
                "format": 1,
                "run_id": "r",
                "estimator": model,
                "task": "binary",
                "classes": ["a", "b"],
                "threshold": 0.5,
                "backbone": "tiny",
                "pooling": "avg",
                "weights": "random",
                "weights_seed": 0,
                "image_size": [32, 32],
                "resize_mode": "stretch",
            },
            path,
        )
    monkeypatch.delitem(sys.modules, "featx.classifiers", raising=False)
    bundle = load_bundle(path)
    assert np.allclose(bundle["estimator"].predict_proba(X), model.predict_proba(X))


# ---------------------------------------------------------------- issue 8


class _Touch:
    """Unpickling it creates a file: a stand-in for the code a tampered bundle would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _copy_run(trained, tmp_path, with_record=True):
    """The trained run's bundle (and its record) under tmp_path/results, as classify lays them out."""
    bundle = trained[2]
    models = tmp_path / "results" / "models"
    models.mkdir(parents=True)
    (models / bundle.name).write_bytes(bundle.read_bytes())
    if with_record:
        record = bundle.parent.parent / "runs" / f"{bundle.stem}.json"
        (tmp_path / "results" / "runs").mkdir()
        (tmp_path / "results" / "runs" / record.name).write_text(record.read_text())
    return models / bundle.name


def test_a_bundle_that_differs_from_its_run_record_is_refused_before_it_is_loaded(trained, tmp_path, capsys):
    """Issue 8, case 15: nothing checked what `featx predict` unpickled."""
    image = str(sorted(trained[0].rglob("*.png"))[0])
    bundle = _copy_run(trained, tmp_path)
    marker = tmp_path / "code-ran"
    content = joblib.load(bundle)
    content["payload"] = _Touch(marker)
    joblib.dump(content, bundle)
    assert main(["predict", "--model", str(bundle), image]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featx: error: Model bundle") and "sha256" in err and "run record" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not marker.exists()


def test_a_bundle_without_its_run_record_is_loaded_with_a_one_line_warning(trained, tmp_path, capsys):
    image = str(sorted(trained[0].rglob("*.png"))[0])
    bundle = _copy_run(trained, tmp_path, with_record=False)
    assert main(["predict", "--model", str(bundle), image]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "No run record beside the bundle" in warnings[0] and "trusted" in warnings[0]
    assert captured.out.startswith("path,")
    # with its record beside it, the check passes silently
    bundle = _copy_run(trained, tmp_path / "with")
    assert main(["predict", "--model", str(bundle), image]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_a_dense_bundle_predicts_without_tensorflow_start_up_noise(trained, tmp_path):
    """Issue 8, case 13: unpickling a dense head imported TensorFlow before featx's quiet import (~8 lines, twice)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    data, _, bundle, _ = trained
    features = bundle.parent.parent.parent / "features"
    config = ClassifyConfig(
        features_dir=features, out_dir=tmp_path / "results", classifiers=("dense",), cv=2, quick=True
    )
    classify_runs(config, Console(quiet=True))
    image = sorted(data.rglob("*.png"))[0]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TF_", "CUDA_"))}  # as users run it
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    dense = tmp_path / "results" / "models" / "tiny__avg__dense.joblib"
    done = subprocess.run(
        [sys.executable, "-m", "featx.cli", "predict", "--model", str(dense), str(image)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("path,")
    noise = [line for line in done.stderr.splitlines() if "absl" in line or "I0000" in line or "E0000" in line]
    assert noise == [], done.stderr


def test_a_url_data_root_reads_the_manifest_s_images_through_fsspec_and_takes_only_manifests(trained, tmp_path):
    data, manifest, bundle, _ = trained
    local = predict_paths(bundle, [manifest], data)
    url = predict_paths(bundle, [manifest], f"file://{data.resolve()}")
    assert url == predict_paths(bundle, [manifest], data.resolve()) and len(url) == len(local)
    image = next(data.rglob("*.png"))
    with pytest.raises(FeatxError, match=r"^--data-root file://\S+ is a URL, which only manifest CSVs resolve against"):
        predict_paths(bundle, [manifest, image], f"file://{data.resolve()}")


def test_csv_rounds_probabilities_and_names_the_threshold_behind_each_label(trained, tmp_path):
    """Issue 19: the CSV showed 1.5497207641601562e-06 and no threshold behind predicted_label."""
    data, _, bundle, run = trained
    images = sorted((data / "test").rglob("*.png"))[:6]
    out = tmp_path / "preds.csv"
    predict_command(bundle, [str(i) for i in images], None, out, False, 32, Console(quiet=True))
    header = out.read_text().splitlines()[0]
    assert header.split(",")[:5] == ["path", "p_normal", "p_opacity", "predicted_label", "threshold"]
    rows = list(csv.DictReader(out.open()))
    exact = {r["path"]: r for r in predict_paths(bundle, [str(i) for i in images])}
    threshold = run["threshold"]["value"]
    for row in rows:
        for column in ("p_normal", "p_opacity", "threshold"):
            assert re.fullmatch(r"[01]\.\d{6}", row[column]), f"{column}={row[column]!r}"
        assert float(row["threshold"]) == pytest.approx(threshold, abs=5e-7)
        assert float(row["p_opacity"]) == pytest.approx(exact[row["path"]]["p_opacity"], abs=5e-7)
        assert row["predicted_label"] == ("opacity" if exact[row["path"]]["p_opacity"] >= threshold else "normal")


def test_threshold_text_for_each_task():
    from featx.results.predict import threshold_text

    assert threshold_text({"task": "binary", "threshold": {"value": 0.25, "rule": "youden"}}) == "0.250000"
    assert threshold_text({"task": "binary", "threshold": None}) == "0.500000"
    assert threshold_text({"task": "multiclass", "threshold": None}) == "argmax"
    assert threshold_text({"task": "multilabel", "threshold": [0.3, 0.6]}) == "0.300000|0.600000"
