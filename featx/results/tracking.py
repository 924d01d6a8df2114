"""MLflow tracking (`featx classify --mlflow [URI]`): one MLflow run per featx run, an experiment per dataset.

Each featx run record becomes one MLflow run in the experiment ``featx <dataset>`` (the leaderboard's
dataset key: manifest sha256 and test rows, so runs are only grouped with runs they can be ranked
against), named by its run id, with

- params: backbone, weights and seed, pooling, classifier, image size, resize mode, the CV scheme
  (folds, splitter, seed, search strategy, threshold rule, val_as_test, quick), the grid (JSON) and the
  chosen parameters (``best.<name>``);
- metrics: the leaderboard.csv values: cv_auc_mean/std, test_auc with its CI bounds and SE,
  sensitivity, specificity, accuracy, balanced_accuracy, pr_auc, threshold;
- tags: manifest and feature-file sha256, featx version, random-init flag, run id, input key and the
  run record's own sha256;
- artifacts: the run JSON, a ROC plot (roc.png) and the model bundle (model/<run>.joblib).

A run record whose sha256 is already tagged on a run of its experiment is not logged again, so re-running
an unchanged `featx classify --mlflow` (every run reused, every record unchanged) logs nothing new. The
client talks to the tracking URI only (MlflowClient, no global state): a local folder is a file store.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from featx.errors import FeatxError
from featx.files import file_sha256

DEFAULT_STORE = "mlruns"  # `--mlflow` without a URI: ./mlruns, a local file store (no server)
EXPERIMENT_PREFIX = "featx "
MAX_PARAM = 6000  # MLflow's limit on a param value
METRICS = (
    "cv_auc_mean",
    "cv_auc_std",
    "test_auc",
    "test_auc_ci_low",
    "test_auc_ci_high",
    "test_auc_se",
    "sensitivity",
    "specificity",
    "accuracy",
    "balanced_accuracy",
    "pr_auc",
    "threshold",
)
RECORD_TAG = "featx.record_sha256"


def tracking_uri(value) -> str | None:
    """The tracking URI a --mlflow value means: None/False: no tracking; True or "": ./mlruns as a file URI;
    a folder path: that folder as a file URI; anything with a scheme (file:, http:, databricks) as given."""
    if value is None or value is False:
        return None
    if value is True or str(value).strip() == "":
        value = DEFAULT_STORE
    text = str(value)
    if "://" in text or text.startswith(("file:", "databricks")):
        return text
    return Path(text).expanduser().resolve().as_uri()


def import_mlflow():
    """The mlflow module, or FeatxError naming the extra that installs it."""
    try:
        import mlflow
        from mlflow.tracking import MlflowClient  # noqa: F401
    except ImportError:
        raise FeatxError(
            "MLflow tracking (--mlflow) needs MLflow; install it with pip install 'featx[mlflow]' (mlflow-skinny)."
        ) from None
    return mlflow


@dataclass(frozen=True)
class Tracked:
    logged: list[str]  # run ids logged now
    unchanged: list[str]  # run ids whose record was already logged
    experiments: list[str]


def _params(run: dict, row: dict) -> dict[str, str]:
    config = run.get("config") or {}
    params = {
        "backbone": run.get("backbone"),
        "backbone_group": run.get("backbone_group"),
        "weights": run.get("weights"),
        "weights_seed": run.get("weights_seed"),
        "pooling": run.get("pooling"),
        "classifier": run.get("classifier"),
        "task": run.get("task"),
        "image_size": run.get("image_size"),
        "resize_mode": run.get("resize_mode"),
        "cv_folds": config.get("cv"),
        "cv_scheme": "patient-grouped stratified K-fold (StratifiedGroupKFold, shuffled)",
        "cv_seed": config.get("seed"),
        "search": run.get("search"),
        "threshold_rule": config.get("threshold_rule"),
        "val_as_test": config.get("val_as_test"),
        "quick": config.get("quick"),
        "test_source": (run.get("data") or {}).get("test_source"),
        "grid": json.dumps(run.get("grid"), sort_keys=True, default=str),
    }
    for name, value in (run.get("best_params") or {}).items():
        params[f"best.{name}"] = value
    return {
        key: (value if isinstance(value, str) else json.dumps(value, default=str))[:MAX_PARAM]
        for key, value in params.items()
        if value is not None
    }


def _metrics(row: dict) -> dict[str, float]:
    import math

    out = {}
    for name in METRICS:
        value = row.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _tags(run: dict, row: dict, record_sha256: str) -> dict[str, str]:
    versions = run.get("versions") or {}
    tags = {
        "featx.run_id": run["run_id"],
        "featx.dataset": row["dataset"],
        "featx.input_key": run.get("input_key") or "",
        RECORD_TAG: record_sha256,
        "manifest_sha256": run.get("manifest_sha256") or "",
        "feature_sha256": run.get("feature_sha256") or "",
        "featx_version": versions.get("featx") or "",
        "random_weights": str(bool(row.get("random_weights"))).lower(),
    }
    return {key: str(value) for key, value in tags.items()}


def _roc_png(run: dict, folder: Path) -> Path | None:
    from featx.results.report import run_roc_png

    png = run_roc_png(run)
    if png is None:
        return None
    path = folder / "roc.png"
    path.write_bytes(png)
    return path


def log_runs(results_dir, run_paths: Sequence[Path], uri: str, console=None) -> Tracked:
    """Log the run records at `run_paths` (of `results_dir`) to the MLflow tracking server or store at `uri`.

    Returns
    -------
    Tracked
        Which runs were logged now and which were already there unchanged.
    """
    import_mlflow()
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from featx.results import records
    from featx.results.leaderboard import leaderboard_rows

    runs = records.load_runs(results_dir)
    wanted = {Path(path).stem for path in run_paths}
    rows = {row["run_id"]: row for row in leaderboard_rows(runs)}
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless this is set (it is in "maintenance mode"); a local folder with
        # no server is what --mlflow promises. Set for this process, so mlflow.search_runs() here reads it too.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    logged, unchanged, experiments = [], [], []
    for run in runs:
        if run["run_id"] not in wanted:
            continue
        record = records.run_path(results_dir, run["run_id"])
        record_sha256 = file_sha256(record)
        row = rows[run["run_id"]]
        name = f"{EXPERIMENT_PREFIX}{row['dataset']}"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(name)
        if name not in experiments:
            experiments.append(name)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RECORD_TAG}` = '{record_sha256}'")
        if found:
            unchanged.append(run["run_id"])
            continue
        mlflow_run = client.create_run(experiment_id, run_name=run["run_id"])
        run_id = mlflow_run.info.run_id
        timestamp = mlflow_run.info.start_time
        client.log_batch(
            run_id,
            metrics=[Metric(key, value, timestamp, 0) for key, value in _metrics(row).items()],
            params=[Param(key, value) for key, value in _params(run, row).items()],
            tags=[RunTag(key, value) for key, value in _tags(run, row, record_sha256).items()],
        )
        client.log_artifact(run_id, str(record))
        with tempfile.TemporaryDirectory(prefix="featx-mlflow-") as scratch:
            roc = _roc_png(run, Path(scratch))
            if roc is not None:
                client.log_artifact(run_id, str(roc))
        bundle = records.bundle_path(results_dir, run["run_id"])
        if bundle.is_file():
            client.log_artifact(run_id, str(bundle), artifact_path="model")
        client.set_terminated(run_id)
        logged.append(run["run_id"])
    if console is not None:
        console.print(
            f"MLflow ({uri}): {len(logged)} run(s) logged, {len(unchanged)} unchanged and already logged, "
            f"in {', '.join(repr(e) for e in experiments) or 'no experiment'}.",
            soft_wrap=True,
        )
    return Tracked(logged, unchanged, experiments)
