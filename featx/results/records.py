"""Run records (results/runs/<run>.json) and model bundles (results/models/<run>.joblib): their one owner.

Stage two hands each finished run (featx.classify.stage.FittedRun) to a RunWriter,
which writes both files atomically, the pair with Ctrl-C deferred, and never over a
run of another feature file. The leaderboard, the report, predict and the demo read
them through load_runs / load_bundle, which check the format; load_bundle also checks
a bundle's sha256 against its run record before unpickling it (a bundle runs code when
loaded). A run record written before the `format` key existed is format 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featx import __version__
from featx.errors import BundleError, FeatxError, ResultsError
from featx.extract.backbones import backbone_group_of
from featx.files import atomic_write, atomic_write_bytes, check_writable_dir, file_sha256
from featx.jsonvalues import jsonable
from featx.runtime import interrupts_deferred, library_versions

if TYPE_CHECKING:
    from featx.classify.stage import FittedRun, ReusableRun, RunPlan

RUN_FORMAT = 1
BUNDLE_FORMAT = 1
RUNS_DIR = "runs"
MODELS_DIR = "models"
RUN_REQUIRED_KEYS = ("run_id", "backbone", "pooling", "classifier", "task", "test")
BUNDLE_REQUIRED_KEYS = (
    "format",
    "run_id",
    "estimator",
    "task",
    "classes",
    "threshold",
    "backbone",
    "pooling",
    "weights",
    "weights_seed",
    "image_size",
    "resize_mode",
)
CV_RESULT_KEYS = (
    "params",
    "mean_test_score",
    "std_test_score",
    "rank_test_score",
    "mean_fit_time",
    "iter",
    "n_resources",
)
# Bundles pickle their estimator by class path; where a class moved, the old path still loads.
LEGACY_MODULES = {"featx.classifiers": "featx.classify.estimators"}
CLASSIFY_HINT = "run `featx classify --features features --out {results}` first (or `featx demo` for the offline demo)"


def run_path(results_dir, run_id: str) -> Path:
    """results_dir/runs/<run_id>.json"""
    return Path(results_dir) / RUNS_DIR / f"{run_id}.json"


def bundle_path(results_dir, run_id: str) -> Path:
    """results_dir/models/<run_id>.joblib"""
    return Path(results_dir) / MODELS_DIR / f"{run_id}.joblib"


# ---------------------------------------------------------------- writing


def run_record(run: FittedRun, bundle_sha256: str | None = None) -> dict:
    """The run JSON of a finished run (docs/internals.md lists every field).

    Parameters
    ----------
    run : featx.classify.stage.FittedRun
    bundle_sha256 : str, optional
        sha256 of the run's written bundle file, which `featx predict` checks before loading it.

    Returns
    -------
    dict
        Plain JSON values (NaN and infinities become null when written).
    """
    attrs = run.feature_attrs
    search = run.search
    cv_results = search.cv_results_
    best = int(search.best_index_)
    config = run.config
    return {
        "format": RUN_FORMAT,
        "run_id": run.plan.run_id,
        "backbone": run.plan.backbone,
        "backbone_group": backbone_group_of(run.plan.backbone, attrs),
        "pooling": run.plan.pooling,
        "classifier": run.plan.classifier,
        "task": run.task,
        "classes": run.classes,
        "positive_class": run.classes[1] if run.task == "binary" else None,
        "weights": attrs.get("weights"),
        "weights_seed": attrs.get("weights_seed", -1),
        "random_weights": attrs.get("weights") == "random",
        "feature_file": str(run.plan.cache),
        "feature_path": str(Path(run.plan.cache).resolve()),
        "feature_sha256": run.feature_sha256,
        "manifest_sha256": attrs.get("manifest_sha256"),
        "image_size": attrs.get("image_size"),
        "resize_mode": attrs.get("resize_mode"),
        "dicom_window": attrs.get("dicom_window", "none"),
        "config": {
            "cv": config.cv,
            "seed": config.seed,
            "n_jobs": config.n_jobs,
            "threshold_rule": config.threshold_rule,
            "val_as_test": config.val_as_test,
            "quick": config.quick,
            "engine": config.engine.name,
            "train_fractions": list(config.train_fractions),
            "efficiency_seeds": config.efficiency_seeds,
            "image_cv": config.image_cv,
            "near_duplicate_threshold": config.near_duplicate_threshold,
            "subgroups": list(config.subgroups),
            "age_bands": list(config.age_bands),
            "subgroup_min": config.subgroup_min,
        },
        "versions": library_versions(),
        "data": run.data,
        "grid": getattr(search, "param_grid", None) or getattr(search, "param_distributions", None),
        "search": getattr(search, "strategy", type(search).__name__),
        "cv_results": {key: cv_results[key] for key in CV_RESULT_KEYS if key in cv_results},
        "best_params": search.best_params_,
        "cv_auc_mean": float(cv_results["mean_test_score"][best]),
        "cv_auc_std": float(cv_results["std_test_score"][best]),
        "threshold": run.threshold,
        "test": run.test_metrics,
        "test_predictions": {
            "ids": list(run.test_ids),
            "y_true": np.asarray(run.y_test).tolist(),
            "score": np.asarray(run.test_score).tolist(),
            "meta": run.test_meta,
        },
        "efficiency": run.efficiency,
        "audit": run.audit,
        "subgroups": run.subgroups,
        "null": run.null,
        "search_scheme": getattr(run, "search_scheme", None),  # optional (issue 16): how the search used the rows
        "timings": run.timings,
        "bundle_sha256": bundle_sha256,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input_key": run.input_key,
        "inputs": run.inputs,
    }


def bundle(run: FittedRun) -> dict:
    """The model bundle of a finished run: the fitted estimator and everything predict needs to rebuild its inputs.

    Parameters
    ----------
    run : featx.classify.stage.FittedRun

    Returns
    -------
    dict
        Keys: format, featx_version, run_id, estimator, task, classes, positive_class, threshold, backbone,
        pooling, weights, weights_seed, weights_sha256, image_size, resize_mode, dicom_window, preprocess,
        feature_sha256, manifest_sha256.
    """
    attrs = run.feature_attrs
    return {
        "format": BUNDLE_FORMAT,
        "featx_version": __version__,
        "run_id": run.plan.run_id,
        "estimator": run.estimator,
        "task": run.task,
        "classes": run.classes,
        "positive_class": run.classes[1] if run.task == "binary" else None,
        "threshold": run.threshold_value,
        "backbone": run.plan.backbone,
        "pooling": run.plan.pooling,
        "weights": attrs.get("weights"),
        "weights_seed": attrs.get("weights_seed", -1),
        "weights_sha256": attrs.get("weights_sha256"),
        "image_size": attrs.get("image_size"),
        "resize_mode": attrs.get("resize_mode"),
        "dicom_window": attrs.get("dicom_window", "none"),
        "preprocess": attrs.get("preprocess"),
        "feature_sha256": run.feature_sha256,
        "manifest_sha256": attrs.get("manifest_sha256"),
    }


def backbone_group(record: dict) -> str:
    """A run record's backbone group: its "backbone_group" key, else the rule for records written before it."""
    return backbone_group_of(str(record.get("backbone", "")), {"backbone_group": record.get("backbone_group")})


class RunWriter:
    """Stage two's sink: writes each finished run's JSON record and joblib bundle into a results folder."""

    def __init__(self, results_dir):
        self.results_dir = Path(results_dir)
        self.saved: list[Path] = []  # the runs this writer wrote, in order (what an interrupted command kept)

    def prepare(self, plans: Sequence[RunPlan] = ()) -> None:
        """Before any fit: create runs/ and models/, prove them writable, and refuse to replace another cache's run.

        A run name is `<cache file stem>__<pooling>__<classifier>`; re-running the same cache replaces
        its runs, but a record of that name fitted on another feature file (features_a/tiny.h5 vs
        features_b/tiny.h5) is a different run: ResultsError, naming both files.
        """
        fix = "pass --out with a folder you can write to"
        check_writable_dir(self.results_dir, ResultsError, "results folder", fix)
        for sub in (RUNS_DIR, MODELS_DIR):
            check_writable_dir(self.results_dir / sub, ResultsError, "results folder", fix)
        for plan in plans:
            _check_not_another_cache(run_path(self.results_dir, plan.run_id), Path(plan.cache))

    def reusable(self, plan: RunPlan, input_key: str) -> ReusableRun | None:
        """The run already in this folder when it was fitted from the same inputs (its record's input_key
        equals `input_key` and its bundle is there), else None: then it is fitted again.

        A record that is unreadable, of another format or without an input key (written before
        runs were reused) is never reused.
        """
        from featx.classify.stage import ReusableRun

        path = run_path(self.results_dir, plan.run_id)
        if not input_key or not bundle_path(self.results_dir, plan.run_id).is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        if not isinstance(record, dict) or record.get("format", 1) != RUN_FORMAT:
            return None
        if record.get("input_key") != input_key or any(key not in record for key in RUN_REQUIRED_KEYS):
            return None
        test_auc = (record.get("test") or {}).get("auc") or {}
        return ReusableRun(
            path, record.get("cv_auc_mean"), test_auc.get("value") if isinstance(test_auc, dict) else None
        )

    def save(self, run: FittedRun) -> Path:
        """Write the bundle, then the run JSON (each atomically); returns the JSON path.

        Parameters
        ----------
        run : featx.classify.stage.FittedRun

        Returns
        -------
        pathlib.Path
            results_dir/runs/<run_id>.json
        """
        import joblib

        model = bundle(run)
        model_path, path = bundle_path(self.results_dir, run.plan.run_id), run_path(self.results_dir, run.plan.run_id)
        with interrupts_deferred():  # Ctrl-C lands after the pair: never a bundle without its record
            atomic_write(model_path, lambda f: joblib.dump(model, f))
            text = json.dumps(jsonable(run_record(run, file_sha256(model_path))), indent=2, allow_nan=False)
            atomic_write_bytes(path, text.encode())
            self.saved.append(path)
        return path


def _check_not_another_cache(record: Path, cache: Path) -> None:
    """ResultsError when the run record at `record` was fitted on a feature file other than `cache`."""
    if not record.is_file():
        return
    try:
        existing = json.loads(record.read_text(encoding="utf-8"))
        recorded = existing.get("feature_path") or existing.get("feature_file")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return  # not a run record: load_runs names it when the results are read
    if recorded and Path(recorded).resolve() != cache.resolve() and not _moved_here(existing, cache):
        raise ResultsError(
            f"'{record}' holds a run fitted on '{recorded}', not on '{cache}', and a run of another feature file is "
            f"never overwritten; write to another folder with --out, or delete that run's files first."
        )


def read_run(path) -> dict:
    """One run record (results/runs/<run>.json); ResultsError when it is unreadable or not a run record."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"Run record '{path}' cannot be read ({error}); re-run `featx classify --force`.") from None
    if not isinstance(record, dict) or any(key not in record for key in RUN_REQUIRED_KEYS):
        raise ResultsError(f"'{path}' is not a featx run record; re-run `featx classify --force`.")
    return record


def update_run(path, **sections) -> None:
    """Set (or, with None, remove) optional top-level sections of a run record in place, atomically
    (issue 17: "external", written after the run by results.validation.score_externals)."""
    record = read_run(path)
    for key, value in sections.items():
        if key in RUN_REQUIRED_KEYS:
            raise ValueError(f"update_run never rewrites the required key {key!r}")
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    text = json.dumps(jsonable(record), indent=2, allow_nan=False)
    atomic_write_bytes(Path(path), text.encode())


def _moved_here(record: dict, cache: Path) -> bool:
    """True when `cache` is the very cache the run was fitted on, moved (a project folder moved as a whole):
    its content sha256 is the one the run's inputs recorded."""
    from featx.extract import store

    fitted_on = (record.get("inputs") or {}).get("cache_content_sha256")
    if not fitted_on:
        return False
    try:
        return store.read_header(cache).attrs.get("content_sha256") == fitted_on
    except FeatxError:
        return False


def clear_runs(results_dir, keep=()) -> None:
    """Delete the run records and bundles of a results folder, except the runs whose record paths are in `keep`.

    The demo owns its results folder: after its stage two it keeps the runs of this demo (fitted
    or reused) and drops the others.
    """
    kept = {Path(path).stem for path in keep}
    for folder, pattern in ((RUNS_DIR, "*.json"), (MODELS_DIR, "*.joblib")):
        for path in (Path(results_dir) / folder).glob(pattern):
            if path.stem not in kept:
                path.unlink()


# ---------------------------------------------------------------- reading


def load_runs(results_dir) -> list[dict]:
    """Every run record under results_dir/runs, sorted by file name.

    Parameters
    ----------
    results_dir : path-like

    Returns
    -------
    list of dict

    Raises
    ------
    ResultsError
        When there is no run record, or one is unreadable, foreign or of another format.
    """
    runs_dir = Path(results_dir) / RUNS_DIR
    paths = sorted(runs_dir.glob("*.json")) if runs_dir.is_dir() else []
    if not paths:
        raise ResultsError(f"No runs found in '{runs_dir}'; {CLASSIFY_HINT.format(results=Path(results_dir))}.")
    runs = []
    for path in paths:
        try:
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ResultsError(
                f"Run file '{path}' is not readable JSON ({error}); delete it or re-run classify."
            ) from None
        missing = [key for key in RUN_REQUIRED_KEYS if not isinstance(run, dict) or key not in run]
        if missing:
            raise ResultsError(
                f"Run file '{path}' is not a featx run record (missing {missing}); remove it from '{runs_dir}'."
            )
        found = run.get("format", 1)
        if found != RUN_FORMAT:
            raise ResultsError(
                f"Run file '{path}' has format {found!r}, this featx reads format {RUN_FORMAT}; "
                "re-run featx classify to write it again."
            )
        runs.append(run)
    return runs


def test_predictions(run: dict):
    """A run record's stored test predictions as a pandas DataFrame, one row per test image.

    Parameters
    ----------
    run : dict
        A run record (load_runs).

    Returns
    -------
    pandas.DataFrame
        ``id``; ``y_true`` (0/1 for binary, the class index for multi-class) or one 0/1 column ``y_<class>``
        per class (multi-label); ``score`` (P(positive class)) for binary, else ``p_<class>`` per class;
        then the test rows' manifest metadata columns.

    Raises
    ------
    ResultsError
        When the record holds no test predictions.
    """
    import pandas as pd

    stored = run.get("test_predictions") or {}
    if not stored.get("ids"):
        raise ResultsError(f"Run {run.get('run_id')!r} holds no test predictions; re-run featx classify to store them.")
    classes = [str(c) for c in run.get("classes") or []]
    frame = pd.DataFrame({"id": [str(i) for i in stored["ids"]]})
    y_true = np.asarray(stored["y_true"])
    if y_true.ndim == 2:
        for k, name in enumerate(classes):
            frame[f"y_{name}"] = y_true[:, k].astype(int)
    else:
        frame["y_true"] = y_true.astype(int)
    score = np.asarray(stored["score"], dtype=float)
    if score.ndim == 1:
        frame["score"] = score
    else:
        for k, name in enumerate(classes):
            frame[f"p_{name}"] = score[:, k]
    for name, values in (stored.get("meta") or {}).items():
        frame[name if name not in frame.columns else f"meta_{name}"] = [str(v) for v in values]
    return frame


def _alias_legacy_modules() -> None:
    """Let bundles written before the layout by stage find their estimator classes at the new module paths."""
    import importlib
    import sys

    for old, new in LEGACY_MODULES.items():
        if old not in sys.modules:
            sys.modules[old] = importlib.import_module(new)


def bundle_record_path(path) -> Path:
    """The run record beside a bundle: results/runs/<run>.json for results/models/<run>.joblib."""
    path = Path(path)
    return path.parent.parent / RUNS_DIR / f"{path.stem}.json"


def check_bundle(path) -> str | None:
    """Check a bundle's bytes against the sha256 in its run record, before anything unpickles it.

    Returns
    -------
    str or None
        None when the sha256 matches; a one-line warning when there is no record (or no sha256 in it)
        to check against.

    Raises
    ------
    BundleError
        When the bundle's sha256 differs from its record's: it was changed or replaced after classify.
    """
    path = Path(path)
    record_path = bundle_record_path(path)
    unchecked = (
        f"'{path}' is loaded unchecked; load bundles from a trusted source only (a bundle runs code when loaded)."
    )
    try:
        expected = json.loads(record_path.read_text(encoding="utf-8")).get("bundle_sha256")
    except FileNotFoundError:
        return f"No run record beside the bundle ({record_path}) to check its sha256 against: {unchecked}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return f"The run record beside the bundle ({record_path}) is not readable JSON: {unchecked}"
    if not expected:
        return f"The run record {record_path} holds no bundle sha256 (an older featx wrote it): {unchecked}"
    found = file_sha256(path)
    if found != expected:
        raise BundleError(
            f"Model bundle '{path}' has sha256 {found[:12]}…, but its run record '{record_path}' says "
            f"{str(expected)[:12]}…; it was changed or replaced after featx classify wrote it, so it is not loaded."
        )
    return None


def load_bundle(path, warn: Callable[[str], object] | None = None) -> dict:
    """A model bundle, checked against its run record's sha256 and to be a featx bundle of a known format.

    A joblib bundle runs code when it is loaded: its sha256 is checked first (`check_bundle`);
    without a record to check against, `warn` (if given) gets check_bundle's one-line warning.

    Parameters
    ----------
    path : path-like
        results/models/<run>.joblib
    warn : callable, optional
        Called with the warning when the bundle cannot be checked.

    Returns
    -------
    dict
        The bundle (see `bundle`).

    Raises
    ------
    BundleError
        When the file is missing, differs from its run record's sha256, is not a featx bundle, is of another
        format, or lacks keys.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(
            f"Model bundle '{path}' does not exist; pass a results/models/<run>.joblib file written by featx classify."
        )
    warning = check_bundle(path)
    if warning and warn is not None:
        warn(warning)
    import joblib

    _alias_legacy_modules()
    try:
        loaded = joblib.load(path)
    except Exception as error:  # pickle raises anything for a foreign file
        raise BundleError(
            f"'{path}' is not a featx model bundle (it could not be loaded: {type(error).__name__}); "
            "pass a results/models/<run>.joblib file written by featx classify."
        ) from None
    if not isinstance(loaded, dict) or "format" not in loaded:
        raise BundleError(
            f"'{path}' is not a featx model bundle (a dict with a 'format' key); "
            "pass a results/models/<run>.joblib file written by featx classify."
        )
    found = loaded["format"]
    if not isinstance(found, int) or isinstance(found, bool) or found != BUNDLE_FORMAT:
        raise BundleError(f"Model bundle '{path}' has format {found!r}; this featx reads format {BUNDLE_FORMAT} only.")
    missing = [key for key in BUNDLE_REQUIRED_KEYS if key not in loaded]
    if missing:
        raise BundleError(f"Model bundle '{path}' lacks the keys {missing}; re-run featx classify to write it again.")
    return loaded
