"""Stage two: grouped-CV model selection on cached embeddings -> results/.

For every backbone x pooling x classifier: a patient-grouped stratified K-fold
grid search on the training rows, a refit on all of them, out-of-fold scores for
the chosen parameters (the only place a decision threshold may come from), and a
single evaluation on the test rows. Each run writes a JSON record and a joblib
bundle; the leaderboard (and the report, when available) close the command.

Everything the user can get wrong is checked before the first fit, so a bad
cache or flag costs seconds, not a half-finished grid.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np
from joblib import Parallel, delayed

from featx import __version__
from featx.classify.scoring import AUCScorer, predict_scores, task_for
from featx.errors import CacheError, ClassifyError, FeatxError, ResultsError, one_of_message

# Mirrors backbones.POOLINGS; repeated here so stage two never imports TensorFlow.
POOLINGS = ("avg", "max", "gem", "flatten")
TRAIN_SPLITS = ("train", "val")
HOLDOUT_FRACTION = 0.2
VERSION_PACKAGES = ("featx", "numpy", "scikit-learn", "xgboost", "tensorflow", "keras", "h5py")


@dataclass(frozen=True)
class ClassifyConfig:
    features_dir: Path = Path("features")
    out_dir: Path = Path("results")
    backbones: tuple[str, ...] | None = None  # None: every complete cache in features_dir
    classifiers: tuple[str, ...] = ("logreg", "xgboost", "dense")
    poolings: tuple[str, ...] | None = None  # None: every pooling each cache holds
    cv: int = 5
    seed: int = 0
    n_jobs: int = 1
    threshold_rule: str = "youden"
    val_as_test: bool = False
    quick: bool = False


@dataclass(frozen=True)
class RunPlan:
    """One backbone x pooling x classifier to fit, with the cache it reads."""

    cache: Path
    backbone: str
    pooling: str
    classifier: str

    @property
    def run_id(self) -> str:
        return f"{self.backbone}__{self.pooling}__{self.classifier}"


@dataclass(frozen=True)
class RowSplit:
    """Which cache rows train and which are evaluated; test rows never enter model selection."""

    train: np.ndarray  # row indices into the cache
    test: np.ndarray
    test_source: str  # "manifest" | "held_out_patients"
    n_failed_dropped: int


# ---------------------------------------------------------------- validation


def _read_cache_header(path: Path) -> dict:
    """Root attributes and cached poolings, without reading any embeddings."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {key: _plain(value) for key, value in f.attrs.items()}
            attrs["_cached_poolings"] = sorted(f["embeddings"].keys()) if "embeddings" in f else []
    except (OSError, KeyError) as error:
        raise CacheError(
            f"Feature file '{path}' cannot be read as an HDF5 embedding cache ({error}); "
            "rebuild it with `featx extract ... --force`."
        ) from None
    return attrs


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _find_caches(config: ClassifyConfig) -> list[Path]:
    from featx.extract import store

    folder = Path(config.features_dir)
    how = (
        "make feature files with `featx extract --backbone NAME --manifest MANIFEST.csv --data-root DATA "
        f"--out {folder}` (or `make extract`)"
    )
    if not folder.is_dir():
        raise ClassifyError(f"The features folder '{folder}' does not exist; {how}.")
    complete = {path.stem: path for path in store.list_caches(folder)}
    unusable = {p.stem: p for p in sorted(folder.glob("*.h5")) if p.stem not in complete}
    partial = {p.name[: -len(".h5.partial")]: p for p in sorted(folder.glob("*.h5.partial"))}
    available = sorted(set(complete) | set(unusable) | set(partial))
    if not available:
        raise ClassifyError(f"No feature files (*.h5) in '{folder}'; {how}.")
    wanted = list(config.backbones) if config.backbones else available
    for name in wanted:
        if name not in available:
            raise ClassifyError(one_of_message("backbone", name, available))
    for name in wanted:
        if name in unusable:
            store.load(unusable[name])  # raises the CacheError that says what is wrong with it
            raise CacheError(f"Feature file '{unusable[name]}' is not a complete featx cache; rebuild it with --force.")
        if name not in complete:
            raise CacheError(
                f"Feature file '{partial[name]}' is incomplete (an extract was interrupted or is still running); "
                "finish it by re-running the same `featx extract` (it resumes), or leave it out with --backbone."
            )
    return [complete[name] for name in wanted]


def _check_results_dir(out_dir: Path) -> None:
    out_dir = Path(out_dir)
    try:
        for sub in ("runs", "models"):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir / "runs", prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ResultsError(
            f"The results folder '{out_dir}' is not writable ({reason}); pass --out with a folder you can write to."
        ) from None


def _check_options(config: ClassifyConfig) -> None:
    from featx.classify import registry as classifiers
    from featx.classify import evaluate

    if not config.classifiers:
        raise ClassifyError(one_of_message("classifier", "", sorted(classifiers.CLASSIFIERS)))
    for name in config.classifiers:
        classifiers.get_classifier(name)
    for pooling in config.poolings or ():
        if pooling not in POOLINGS:
            raise ClassifyError(one_of_message("pooling", pooling, POOLINGS))
    if config.cv < 2:
        raise ClassifyError(f"The 'cv' parameter must be at least 2 folds. Got {config.cv} instead.")
    # The rule is checked on a toy example so a typo fails now, not after the grid search.
    evaluate.choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.6]), rule=config.threshold_rule)


def _check_same_manifest(headers: dict[Path, dict]) -> None:
    by_manifest: dict[str, list[Path]] = {}
    for path, attrs in headers.items():
        by_manifest.setdefault(str(attrs.get("manifest_sha256")), []).append(path)
    if len(by_manifest) > 1:
        described = "; ".join(
            f"{', '.join(p.name for p in paths)} (manifest {sha[:12]})" for sha, paths in by_manifest.items()
        )
        raise ClassifyError(
            f"The feature files were built from different manifests (manifest_sha256 differs: {described}); "
            "re-extract them from one manifest or choose caches from one with --backbone."
        )


def _poolings_for(path: Path, attrs: dict, config: ClassifyConfig) -> list[str]:
    cached = attrs["_cached_poolings"]
    if not config.poolings:
        return [p for p in POOLINGS if p in cached] + [p for p in cached if p not in POOLINGS]
    for pooling in config.poolings:
        if pooling not in cached:
            raise ClassifyError(
                f"Feature file '{path}' has no {pooling!r} embeddings (it holds {cached}); "
                f"re-extract with --pooling {','.join(sorted(set(cached) | {pooling}))} --force or drop it from --pooling."
            )
    return list(config.poolings)


def split_rows(features, config: ClassifyConfig) -> RowSplit:
    """Training and test rows of a cache; rows whose image failed are dropped and counted."""
    from featx.classify import evaluate

    ok = np.asarray(features.ok, dtype=bool)
    split = np.asarray(features.split).astype(str)
    train_splits = ("train",) if config.val_as_test else TRAIN_SPLITS
    test_splits = ("test", "val") if config.val_as_test else ("test",)
    in_train = np.isin(split, train_splits)
    in_test = np.isin(split, test_splits)
    n_failed = int(np.sum(~ok & (in_train | in_test)))
    train = np.flatnonzero(in_train & ok)
    test = np.flatnonzero(in_test & ok)
    if len(train) == 0:
        raise ClassifyError(
            f"Feature file '{features.path}' has no usable training rows (split {' or '.join(train_splits)}); "
            "check the manifest's split column."
        )
    _check_classes(features, train, "training")
    if len(test):
        return RowSplit(train, test, "manifest", n_failed)
    groups = np.asarray(features.patient_id).astype(str)[train]
    n_patients = len(np.unique(groups))
    if n_patients < 2:
        raise ClassifyError(
            f"Feature file '{features.path}' has no test rows and only {n_patients} patient to hold out from; "
            "add test rows to the manifest."
        )
    keep, held = evaluate.holdout_patients(features.y[train], groups, test_fraction=HOLDOUT_FRACTION, seed=config.seed)
    keep, held = _as_indices(keep, len(train)), _as_indices(held, len(train))
    return RowSplit(train[keep], train[held], "held_out_patients", n_failed)


def _as_indices(selection, n: int) -> np.ndarray:
    selection = np.asarray(selection)
    return np.flatnonzero(selection) if selection.dtype == bool and len(selection) == n else selection.astype(int)


def _check_classes(features, rows: np.ndarray, what: str) -> None:
    y = np.asarray(features.y)[rows]
    classes = list(features.classes)
    if y.ndim == 2:
        constant = [k for k in range(y.shape[1]) if len(np.unique(y[:, k])) < 2]
        if what == "test" and len(constant) < y.shape[1]:
            return  # evaluate leaves such labels out of the mean AUC and says so in the run JSON
        for k, name in enumerate(classes):
            values = np.unique(y[:, k])
            if len(values) < 2:
                state = "present" if values.size and values[0] == 1 else "absent"
                raise ClassifyError(
                    f"Label {name!r} is {state} in every {what} row of '{features.path}'; "
                    "each label needs positive and negative examples for an AUC."
                )
        return
    present = np.unique(y)
    if len(present) < 2:
        only = classes[int(present[0])] if present.size and int(present[0]) < len(classes) else "?"
        raise ClassifyError(
            f"The {what} rows of '{features.path}' hold a single class ({only!r}); "
            f"classification needs at least two of {classes}."
        )


def _check_finite(features) -> None:
    finite = np.isfinite(features.X)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        bad_rows = int(np.count_nonzero(~finite.all(axis=1)))
        raise ClassifyError(
            f"Feature file '{features.path}' has {bad} NaN or infinite values in embeddings/{features.pooling} "
            f"({bad_rows} rows); rebuild it with `featx extract ... --force`."
        )


def plan_runs(config: ClassifyConfig) -> list[RunPlan]:
    """Validate every input and return the runs to do; raises a FeatxError on the first problem."""
    from featx.classify import evaluate
    from featx.extract import store

    _check_options(config)
    caches = _find_caches(config)
    headers = {path: _read_cache_header(path) for path in caches}
    _check_same_manifest(headers)
    plans = []
    for path, attrs in headers.items():
        for pooling in _poolings_for(path, attrs, config):
            features = store.load(path, pooling)
            _check_finite(features)
            rows = split_rows(features, config)
            _check_classes(features, rows.test, "test")
            groups = np.asarray(features.patient_id).astype(str)[rows.train]
            evaluate.grouped_splits(features.y[rows.train], groups, config.cv, config.seed, classes=features.classes)
            for classifier in config.classifiers:
                plans.append(RunPlan(path, str(attrs.get("backbone") or path.stem), pooling, classifier))
            del features
    _check_results_dir(config.out_dir)
    return plans


# ---------------------------------------------------------------- one run


@dataclass
class Selection:
    """Model selection on training rows only: the search, its OOF scores and threshold."""

    search: object
    splits: list
    oof_score: np.ndarray
    threshold: dict | None
    search_s: float
    oof_s: float


def _fold_scores(model, X, y, fit_rows, score_rows, task):
    """Out-of-fold scores of one grouped fold: fit on its training side, score its held-out side."""
    return predict_scores(model.fit(X[fit_rows], y[fit_rows]), X[score_rows], task)


def select_model(
    classifier: str, task: str, classes: Sequence[str], X_train, y_train, groups, config: ClassifyConfig
) -> Selection:
    """Grid search, refit and out-of-fold scores. Sees the training rows and nothing else."""
    from sklearn.base import clone

    from featx.classify import registry as classifiers
    from featx.classify import evaluate

    splits = evaluate.grouped_splits(y_train, groups, config.cv, config.seed, classes=classes)
    estimator, grid = classifiers.build_classifier(
        classifier, task, len(classes), seed=config.seed, n_jobs=config.n_jobs, quick=config.quick
    )
    search = classifiers.make_search(
        classifier, estimator, grid, splits, AUCScorer(task), n_jobs=config.n_jobs, seed=config.seed
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        # NaN early-round scores of successive halving are expected (see AUCScorer); not news to the user.
        warnings.filterwarnings("ignore", message="One or more of the test scores are non-finite")
        search.fit(X_train, y_train)
    search_s = time.perf_counter() - started

    started = time.perf_counter()
    oof = np.zeros((len(y_train),) if task == "binary" else y_train.shape[:1] + (len(classes),), dtype=np.float64)
    fold_scores = Parallel(n_jobs=config.n_jobs)(
        delayed(_fold_scores)(clone(search.best_estimator_), X_train, y_train, fit_rows, score_rows, task)
        for fit_rows, score_rows in splits
    )
    for (_, score_rows), scores in zip(splits, fold_scores):
        oof[score_rows] = scores
    oof_s = time.perf_counter() - started

    threshold = evaluate.choose_threshold(y_train, oof, rule=config.threshold_rule) if task == "binary" else None
    return Selection(search, splits, oof, threshold, search_s, oof_s)


def run_one(plan: RunPlan, config: ClassifyConfig, features=None) -> Path:
    """Fit, evaluate and save one backbone x pooling x classifier; returns the JSON path.

    `features` is the loaded FeatureSet of plan.cache/plan.pooling when the caller has it.
    """
    import joblib

    from featx.classify import evaluate
    from featx.extract import store

    started_total = time.perf_counter()
    if features is None:
        features = store.load(plan.cache, plan.pooling)
    rows = split_rows(features, config)
    classes = [str(c) for c in features.classes]
    task = task_for(features.y, classes)
    groups = np.asarray(features.patient_id).astype(str)
    ids = np.asarray(features.ids).astype(str)
    X_train, y_train = features.X[rows.train], np.asarray(features.y)[rows.train]

    selection = select_model(plan.classifier, task, classes, X_train, y_train, groups[rows.train], config)
    search = selection.search

    # The test rows are sliced out only now, after model selection is fixed.
    X_test, y_test = features.X[rows.test], np.asarray(features.y)[rows.test]
    started = time.perf_counter()
    test_score = predict_scores(search.best_estimator_, X_test, task)
    predict_s = time.perf_counter() - started
    threshold_value = selection.threshold["value"] if selection.threshold else None
    test_metrics = evaluate.evaluate_test(task, y_test, test_score, classes, threshold_value)

    record = _run_record(plan, config, features, rows, task, classes, selection, test_metrics)
    record["test_predictions"] = {
        "ids": ids[rows.test].tolist(),
        "y_true": y_test.tolist(),
        "score": test_score.tolist(),
    }
    refit_s = float(getattr(search, "refit_time_", 0.0) or 0.0)
    record["timings"] = {
        "search_s": selection.search_s,
        "refit_s": refit_s,
        "oof_s": selection.oof_s,
        "predict_s": predict_s,
        "total_s": time.perf_counter() - started_total,
        "n_fits": len(search.cv_results_["params"]) * len(selection.splits) + 1,
    }
    record["created_utc"] = _utc_now()

    out_dir = Path(config.out_dir)
    bundle = _bundle(plan, features, task, classes, search.best_estimator_, threshold_value)
    _atomic_write(out_dir / "models" / f"{plan.run_id}.joblib", lambda f: joblib.dump(bundle, f))
    json_path = out_dir / "runs" / f"{plan.run_id}.json"
    text = json.dumps(_jsonable(record), indent=2, allow_nan=False)
    _atomic_write(json_path, lambda f: f.write(text.encode()))
    return json_path


def _run_record(plan, config, features, rows, task, classes, selection, test_metrics) -> dict:
    attrs = features.attrs
    search = selection.search
    y = np.asarray(features.y)
    groups = np.asarray(features.patient_id).astype(str)
    best = int(search.best_index_)
    cv_results = search.cv_results_
    return {
        "run_id": plan.run_id,
        "backbone": plan.backbone,
        "pooling": plan.pooling,
        "classifier": plan.classifier,
        "task": task,
        "classes": classes,
        "positive_class": classes[1] if task == "binary" else None,
        "weights": attrs.get("weights"),
        "weights_seed": attrs.get("weights_seed", -1),
        "random_weights": attrs.get("weights") == "random",
        "feature_file": str(plan.cache),
        "feature_sha256": features.sha256,
        "manifest_sha256": attrs.get("manifest_sha256"),
        "image_size": attrs.get("image_size"),
        "resize_mode": attrs.get("resize_mode"),
        "config": {
            "cv": config.cv,
            "seed": config.seed,
            "n_jobs": config.n_jobs,
            "threshold_rule": config.threshold_rule,
            "val_as_test": config.val_as_test,
            "quick": config.quick,
        },
        "versions": library_versions(),
        "data": {
            "n_train": int(len(rows.train)),
            "n_test": int(len(rows.test)),
            "n_train_patients": int(len(np.unique(groups[rows.train]))),
            "n_test_patients": int(len(np.unique(groups[rows.test]))),
            "class_counts": {
                "train": _class_counts(y[rows.train], classes),
                "test": _class_counts(y[rows.test], classes),
            },
            "test_source": rows.test_source,
            "n_failed_images_dropped": rows.n_failed_dropped,
        },
        "grid": _grid_of(search),
        "search": type(search).__name__,
        "cv_results": {
            key: cv_results[key]
            for key in ("params", "mean_test_score", "std_test_score", "rank_test_score", "mean_fit_time", "iter", "n_resources")
            if key in cv_results
        },
        "best_params": search.best_params_,
        "cv_auc_mean": float(cv_results["mean_test_score"][best]),
        "cv_auc_std": float(cv_results["std_test_score"][best]),
        "threshold": selection.threshold,
        "test": test_metrics,
    }


def _grid_of(search):
    grid = getattr(search, "param_grid", None)
    if grid is None:
        grid = getattr(search, "param_distributions", None)
    return grid


def _class_counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    if y.ndim == 2:
        return {name: int(y[:, k].sum()) for k, name in enumerate(classes)}
    return {name: int(np.sum(y == k)) for k, name in enumerate(classes)}


def _bundle(plan, features, task, classes, estimator, threshold_value) -> dict:
    attrs = features.attrs
    return {
        "format": 1,
        "featx_version": __version__,
        "run_id": plan.run_id,
        "estimator": estimator,
        "task": task,
        "classes": classes,
        "positive_class": classes[1] if task == "binary" else None,
        "threshold": threshold_value,
        "backbone": plan.backbone,
        "pooling": plan.pooling,
        "weights": attrs.get("weights"),
        "weights_seed": attrs.get("weights_seed", -1),
        "weights_sha256": attrs.get("weights_sha256"),
        "image_size": attrs.get("image_size"),
        "resize_mode": attrs.get("resize_mode"),
        "preprocess": attrs.get("preprocess"),
        "feature_sha256": features.sha256,
        "manifest_sha256": attrs.get("manifest_sha256"),
    }


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (importing TensorFlow just to ask would cost seconds)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if versions["featx"] is None:
        versions["featx"] = __version__
    return versions


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written results."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _jsonable(value):
    """numpy and friends -> plain JSON; NaN/inf -> null (strict JSON readers reject NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ma.MaskedArray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)


# ---------------------------------------------------------------- the command


def run_classify(config: ClassifyConfig, console=None) -> list[Path]:
    """Validate, then fit every planned run; returns the run JSON paths written."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from featx.extract import store

    console = console or Console()
    plans = plan_runs(config)
    written: list[Path] = []
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    started = time.perf_counter()
    loaded_key, features = None, None
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("classify", total=len(plans), rate="")
        for plan in plans:
            progress.update(bar, description=f"{plan.backbone} / {plan.pooling} / {plan.classifier}")
            if loaded_key != (plan.cache, plan.pooling):  # plans are grouped by cache and pooling: load each once
                features, loaded_key = None, None
                features = store.load(plan.cache, plan.pooling)
                loaded_key = (plan.cache, plan.pooling)
                if split_rows(features, config).test_source == "held_out_patients":
                    progress.console.print(
                        f"[yellow]{plan.cache.name} has no test rows: holding out {HOLDOUT_FRACTION:.0%} of its "
                        f"patients (stratified, seed {config.seed}) as the test set.[/yellow]"
                    )
            written.append(run_one(plan, config, features))
            elapsed = time.perf_counter() - started
            progress.update(bar, advance=1, rate=f"{len(written) / elapsed * 60:.1f} runs/min")
        progress.update(bar, description="classify: done")
    return written


def classify_command(config: ClassifyConfig, console) -> None:
    """`featx classify`: the runs, then the leaderboard, then the report when one can be made."""
    from featx.results import leaderboard

    written = run_classify(config, console)
    out_dir = Path(config.out_dir)
    console.print(f"Wrote {len(written)} run(s) to {out_dir / 'runs'} and their models to {out_dir / 'models'}.")
    runs = leaderboard.load_runs(out_dir)
    csv_path, md_path = leaderboard.write_leaderboard(out_dir, runs)
    leaderboard.print_leaderboard(runs, console)
    console.print(f"Leaderboard written to {csv_path} and {md_path}.")
    _write_report_if_available(out_dir, console)


def _write_report_if_available(out_dir: Path, console) -> None:
    try:
        from featx.results.report import write_report
    except ImportError:
        return
    try:
        path = write_report(out_dir)
    except FeatxError as error:
        console.print(f"[yellow]The report was not written: {error} The results above are saved.[/yellow]")
    except Exception as error:  # the runs are already on disk; a plotting failure must not hide them
        console.print(
            f"[yellow]The report was not written ({type(error).__name__}: {error}); the results above are saved; "
            f"retry with `featx report --results {out_dir}`.[/yellow]"
        )
    else:
        console.print(f"Report written to {path}.")
