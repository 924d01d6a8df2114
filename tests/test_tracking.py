"""MLflow tracking (featx classify --mlflow, featx.classify(mlflow=...)) against a real local store, read back
through MLflow's own client."""

from __future__ import annotations

import csv

import pytest
from cachefactory import write_signal_cache

import featx
from featx.cli import main

mlflow = pytest.importorskip("mlflow", reason="the featx[mlflow] extra is not installed")


@pytest.fixture
def features(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads its file store only when told
    folder = tmp_path / "features"
    write_signal_cache(folder / "tiny.h5", n_train_patients=24, n_test=20)
    write_signal_cache(folder / "other.h5", backbone="other", feature_seed=5, n_train_patients=24, n_test=20)
    return folder


def _leaderboard_csv(results):
    with open(results / "leaderboard.csv", newline="") as handle:
        return {row["run_id"]: row for row in csv.DictReader(handle)}


def test_classify_mlflow_logs_one_run_per_featx_run_and_nothing_new_when_unchanged(features, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    args = ["classify", "--features", str(features), "--out", str(results), "--classifier", "logreg", "--quick"]
    assert main([*args, "--cv", "3", "--mlflow"]) == 0  # no URI: ./mlruns
    uri = (tmp_path / "mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(search_all_experiments=True)
    table = _leaderboard_csv(results)
    assert len(found) == len(table) == 2
    for _, run in found.iterrows():
        row = table[run["tags.featx.run_id"]]
        assert run["metrics.test_auc"] == float(row["test_auc"])
        assert run["metrics.test_auc_ci_low"] == float(row["test_auc_ci_low"])
        assert run["metrics.cv_auc_mean"] == float(row["cv_auc_mean"])
        assert run["params.classifier"] == "logreg" and run["params.cv_folds"] == "3"
        assert run["tags.random_weights"] == "true" and run["tags.featx_version"] == featx.__version__
        assert run["tags.manifest_sha256"] == row["manifest_sha256"]
    client = MlflowClient(uri)
    experiments = {e.name for e in client.search_experiments()} - {"Default"}
    assert experiments == {f"featx {next(iter(table.values()))['dataset']}"}  # one dataset: one experiment
    run_id, table_id = found["run_id"].iloc[0], found["tags.featx.run_id"].iloc[0]
    params = client.get_run(run_id).data.params
    assert {"backbone", "weights", "pooling", "grid", "cv_scheme"} <= set(params)
    assert any(key.startswith("best.") for key in params)
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"roc.png", "model"} <= artifacts and any(a.endswith(".json") for a in artifacts)
    assert [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, "model")] == [f"{table_id}.joblib"]

    # the same classify again (every run reused, records unchanged): nothing new
    assert main([*args, "--cv", "3", "--mlflow", str(tmp_path / "mlruns")]) == 0
    board = featx.classify(features, out=results, classifiers="logreg", quick=True, cv=3, mlflow=uri, verbose=False)
    assert len(mlflow.search_runs(search_all_experiments=True)) == 2 and len(board) == 2
    # a changed run (other folds) is a new MLflow run
    featx.classify(features, out=results, classifiers="logreg", quick=True, cv=4, mlflow=uri, verbose=False)
    assert len(mlflow.search_runs(search_all_experiments=True)) == 4


def test_without_mlflow_installed_the_error_names_the_extra(features, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name == "mlflow" or name.startswith("mlflow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.raises(featx.FeatxError, match=r"featx\[mlflow\]"):
        featx.classify(features, out=tmp_path / "r", classifiers="logreg", mlflow=True, verbose=False)
    assert not (tmp_path / "r").exists()  # said before any fit
