"""The public Python API (featx/api.py): names, documentation, options into the configs, DataFrames, models."""

from __future__ import annotations

import csv
import inspect
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from cachefactory import write_cache, write_signal_cache

import featx
from featx.errors import ClassifyError, FeatxError

# The public API. Removing or renaming one breaks users: this list only grows, on purpose.
PUBLIC = {
    "FeatxError",
    "Features",
    "Leaderboard",
    "Model",
    "__version__",
    "classify",
    "export",
    "extract",
    "leaderboard",
    "load_features",
    "load_model",
}
FUNCTIONS = ("extract", "classify", "leaderboard", "load_features", "load_model", "export")


def test_all_lists_exactly_the_public_api():
    assert set(featx.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(featx, name) is not None


@pytest.mark.parametrize("name", FUNCTIONS)
def test_public_functions_have_numpydoc_docstrings(name):
    function = getattr(featx, name)
    doc = inspect.getdoc(function) or ""
    assert callable(function) and function.__module__ == "featx.api"
    for section in ("Parameters\n----------", "Returns\n-------"):
        assert section in doc, f"featx.{name} lacks a numpydoc {section.splitlines()[0]} section"
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            assert "**options" in doc
        else:
            assert parameter.name in doc, f"featx.{name} does not document {parameter.name!r}"


def test_import_featx_loads_no_heavy_library():
    code = (
        "import sys, featx; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'sklearn', 'pandas', 'h5py', 'xgboost', 'mlflow', 'pyarrow', 'rich'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stage_subpackages_never_rebind_the_api_functions():
    from featx.classify import stage as classify_stage  # noqa: F401
    from featx.extract import backbones, stage  # noqa: F401

    assert featx.extract.__module__ == "featx.api" and featx.classify.__module__ == "featx.api"
    assert sys.modules["featx.extract"].stage is stage  # the subpackage is still importable as before


def test_an_unknown_option_is_a_featx_error_with_the_closest_field(tmp_path):
    with pytest.raises(
        FeatxError,
        match=r"no option 'pooling'; its options are the fields of ExtractConfig: .* \(did you mean 'poolings'\?\)",
    ):
        featx.extract(tmp_path / "m.csv", tmp_path, "tiny", pooling="avg")
    with pytest.raises(FeatxError, match="ClassifyConfig"):
        featx.classify(tmp_path, out=tmp_path / "r", cvv=3)


def test_errors_are_the_sentences_the_cli_prints(tmp_path, capsys):
    from featx.cli import main

    missing = tmp_path / "nothing"
    with pytest.raises(ClassifyError) as raised:
        featx.classify(missing, out=tmp_path / "r", verbose=False)
    assert main(["classify", "--features", str(missing), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == f"featx: error: {raised.value}"


def test_progress_in_jupyter_without_ipywidgets_prints_as_text(monkeypatch):
    import importlib.util

    import rich.console

    from featx.api import _console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    assert _console(True).is_jupyter  # with ipywidgets: rich's live widgets
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert not _console(True).is_jupyter  # without: text, printed as the bars finish
    assert _console(False).quiet


def test_options_reach_the_config_dataclass(tmp_path, monkeypatch):
    """**options go straight into ClassifyConfig (strings coerced to the field's tuple); n_jobs -1 on Ray."""
    from featx.results import finish

    seen = []
    monkeypatch.setattr(finish, "classify_command", lambda config, console: seen.append(config))
    monkeypatch.setattr(featx.Leaderboard, "load", classmethod(lambda cls, out: out))
    featx.classify(tmp_path, out=tmp_path / "r", classifiers="logreg,dense", poolings="avg,max", cv=3, seed=7)
    featx.classify(tmp_path, out=tmp_path / "r", engine="ray", train_fractions=[1.0, 0.1], age_bands="0,50")
    first, second = seen
    assert first.classifiers == ("logreg", "dense") and first.poolings == ("avg", "max")
    assert (first.cv, first.seed, first.n_jobs, first.out_dir) == (3, 7, None, tmp_path / "r")
    assert second.engine.name == "ray" and second.n_jobs == -1
    assert second.train_fractions == (0.1, 1.0) and second.age_bands == (0.0, 50.0)


# ---------------------------------------------------------------- stage two on a written cache (no TensorFlow)


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """A cache with two poolings and a metadata column, classified with a quick logreg."""
    root = tmp_path_factory.mktemp("api")
    cache = write_signal_cache(root / "features" / "tiny.h5", poolings=("avg", "max"), n_train_patients=24, n_test=20)
    avg, pooled_max = featx.load_features(cache), featx.load_features(cache, "max")
    sex = ["F" if i % 2 else "M" for i in range(len(avg))]
    X = {"avg": avg.X, "max": pooled_max.X}
    write_cache(cache, X, avg.y, avg.classes, avg.split, avg.patient_id, ids=list(avg.ids), meta={"sex": sex})
    board = featx.classify(
        root / "features",
        out=root / "results",
        classifiers=["logreg"],
        quick=True,
        cv=3,
        verbose=False,
        metadata_floor=False,  # the sex column would add the metadata-only floor's run (issue 17)
    )
    return root, board


def test_classify_returns_the_leaderboard_of_leaderboard_csv(classified):
    root, board = classified
    frame = board.to_pandas()
    with open(root / "results" / "leaderboard.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert list(frame.columns) == list(written[0].keys())
    assert list(frame["run_id"]) == [row["run_id"] for row in written]
    assert sorted(frame["run_id"]) == ["tiny__avg__logreg", "tiny__max__logreg"]
    assert list(frame["test_auc"]) == [float(row["test_auc"]) for row in written]
    assert frame["best_params"].iloc[0] == json.loads(written[0]["best_params"])
    pd.testing.assert_frame_equal(featx.leaderboard(root / "results"), frame)
    assert board.best == written[0]["run_id"] and len(board) == 2


def test_test_predictions_are_a_dataframe_of_the_run_record(classified):
    root, board = classified
    frame = board.test_predictions("tiny__avg__logreg")
    record = json.loads((root / "results" / "runs" / "tiny__avg__logreg.json").read_text())
    stored = record["test_predictions"]
    assert list(frame.columns) == ["id", "y_true", "score", "sex"]
    assert list(frame["id"]) == stored["ids"] and np.allclose(frame["score"], stored["score"])
    with pytest.raises(FeatxError, match="Got 'nope' instead"):
        board.test_predictions("nope")


def test_load_features_and_its_dataframe(classified):
    root, _ = classified
    features = featx.load_features(root / "features" / "tiny.h5", pooling="max")
    assert features.X.dtype == np.float32 and features.X.shape[0] == len(features) == len(features.ids)
    assert features.pooling == "max" and features.backbone == "tiny" and set(features.metadata) == {"sex"}
    frame = features.to_pandas()
    assert list(frame.columns) == ["id", "label", "y", "split", "patient_id", "ok", "sex", "embedding"]
    assert np.array_equal(np.stack(frame["embedding"]), features.X)
    assert list(frame["label"]) == [features.classes[k] for k in features.y]
    wide = features.to_pandas(embeddings="wide")
    assert np.array_equal(wide[[f"max_{i}" for i in range(features.X.shape[1])]].to_numpy(), features.X)
    with pytest.raises(FeatxError, match="Got 'gem' instead"):
        featx.load_features(root / "features" / "tiny.h5", pooling="gem")


def test_parquet_export_reads_back_equal_in_pandas(classified, tmp_path):
    from featx.cli import main

    root, _ = classified
    cache = root / "features" / "tiny.h5"
    out = tmp_path / "tiny.parquet"
    assert main(["export", str(cache), "--format", "parquet", "--pooling", "avg", "--out", str(out)]) == 0
    features = featx.load_features(cache)
    expected, read = features.to_pandas(), pd.read_parquet(out)
    pd.testing.assert_frame_equal(read.drop(columns="embedding"), expected.drop(columns="embedding"))
    assert np.array_equal(np.stack(read["embedding"]), features.X)
    import pyarrow.parquet as pq

    info = json.loads(pq.read_schema(out).metadata[b"featx"])
    assert info["pooling"] == "avg" and info["classes"] == list(features.classes)
    assert info["attrs"]["content_sha256"] == features.attrs["content_sha256"]
    assert featx.export(cache, pooling="max") == root / "features" / "tiny.max.parquet"
    assert main(["export", str(cache), "--format", "csv"]) == 2


def test_a_model_predicts_embeddings_like_its_run(classified):
    root, board = classified
    model = featx.load_model(board.bundle("tiny__avg__logreg"))
    assert (model.run_id, model.task, model.classes) == ("tiny__avg__logreg", "binary", list(board.runs[0]["classes"]))
    features = featx.load_features(root / "features" / "tiny.h5")
    test = features.split == "test"
    frame = model.predict_embeddings(features.X[test])
    stored = board.test_predictions("tiny__avg__logreg")
    positive = f"p_{model.classes[1]}"
    assert np.allclose(frame[positive].to_numpy(), stored["score"].to_numpy())
    expected = np.where(frame[positive] >= model.threshold, model.classes[1], model.classes[0])
    assert list(frame["predicted_label"]) == list(expected)
    with pytest.raises(FeatxError, match="shape"):
        model.predict_embeddings(features.X[:, :3])


def test_load_model_refuses_an_altered_bundle(classified, tmp_path):
    _, board = classified
    altered = tmp_path / "models" / "x.joblib"
    altered.parent.mkdir()
    altered.write_bytes(board.bundle().read_bytes()[:-10])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x.json").write_text(json.dumps({"bundle_sha256": "0" * 64}))
    with pytest.raises(featx.errors.BundleError, match="sha256"):
        featx.load_model(altered)


# ---------------------------------------------------------------- end to end through TensorFlow (tiny, random)


def test_extract_then_predict_images_paths_and_arrays(tmp_path):
    from PIL import Image

    from featx.data.synthetic import generate_phantoms

    manifest = generate_phantoms(tmp_path / "data", n_patients=16, images_per_patient=(2, 3), image_size=32, seed=0)
    features = featx.extract(
        manifest, manifest.parent, "tiny", out=tmp_path / "features", weights="random", verbose=False
    )
    assert features == tmp_path / "features"
    assert sorted(p.name for p in features.glob("*.h5")) == ["pixels.h5", "tiny.h5"]  # the pixel floor by default
    board = featx.classify(
        features, out=tmp_path / "results", classifiers="logreg", backbones="tiny", quick=True, cv=3, verbose=False
    )
    model = featx.load_model(board.bundle())
    cached = featx.load_features(features / "tiny.h5")
    images = [manifest.parent / path for path in cached.ids[:3]]
    frame = model.predict([*images, np.asarray(Image.open(images[0]))])
    assert list(frame["path"]) == [str(p) for p in images] + ["<array 3>"]
    assert frame["error"].isna().all()
    from_cache = model.predict_embeddings(cached.X[:3])
    positive = f"p_{model.classes[1]}"
    assert np.allclose(frame[positive][:3], from_cache[positive], atol=1e-5)
    assert np.isclose(frame[positive][3], frame[positive][0], atol=1e-6)
    with pytest.raises(FeatxError, match="uint8"):
        model.predict([np.zeros((4, 4), dtype=float)])


def test_a_multilabel_cache_exports_and_reads_back(tmp_path):
    cache = write_signal_cache(tmp_path / "f" / "tiny.h5", multilabel=True, n_classes=3, n_train_patients=8, n_test=6)
    features = featx.load_features(cache)
    frame = features.to_pandas()
    assert features.multilabel and all(
        "|" in label or label in features.classes or label == "" for label in frame["label"]
    )
    read = pd.read_parquet(featx.export(cache))
    assert list(read.columns) == list(frame.columns)
    assert np.array_equal(np.stack(read["y"]), features.y) and np.array_equal(np.stack(read["embedding"]), features.X)
    assert list(read["label"]) == list(frame["label"])
