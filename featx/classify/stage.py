"""Stage two: grouped-CV model selection on cached embeddings.

For every backbone x pooling x classifier: a patient-grouped stratified K-fold
grid search on the training rows, a refit on all of them, out-of-fold scores for
the chosen parameters (the only place a decision threshold may come from), and a
single evaluation on the test rows. Each finished run is handed to a sink (the
results stage's writer, featx.results.records.RunWriter) as a FittedRun.

Everything the user can get wrong is checked before the first fit, from the caches'
headers and row metadata, so a bad cache or flag costs seconds, not a half-finished
grid. Each cache is hashed once per command and each pooling loaded once.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from joblib import Parallel, delayed

from featx.classify import audit, efficiency, evaluate
from featx.classify import registry as classifiers
from featx.classify import subgroups as subgroup_auc
from featx.classify.scoring import AUCScorer, predict_scores, task_for
from featx.engines import LOCAL, EngineConfig, check_engine, fit_backend
from featx.errors import CacheError, ClassifyError, one_of_message
from featx.extract import store
from featx.extract.backbones import POOLINGS
from featx.files import file_sha256

TRAIN_SPLITS = ("train", "val")
HOLDOUT_FRACTION = 0.2


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
    engine: EngineConfig = LOCAL  # where joblib runs the independent fits (featx/engines): this machine or Ray
    train_fractions: tuple[float, ...] = ()  # data-efficiency curve: shares of training patients; () = no curve
    efficiency_seeds: int = efficiency.DEFAULT_SEEDS
    image_cv: bool = True  # audit: also cross-validate the chosen configuration on plain image folds
    near_duplicate_threshold: float = audit.NEAR_DUPLICATE_THRESHOLD
    subgroups: tuple[str, ...] = ()  # metadata columns (or age_band) to report test AUCs per value of
    age_bands: tuple[float, ...] = subgroup_auc.DEFAULT_AGE_BANDS
    subgroup_min: int = subgroup_auc.DEFAULT_MIN_COUNT  # positives and negatives a subgroup needs for its AUC


@dataclass(frozen=True)
class RunPlan:
    """One backbone x pooling x classifier to fit, with the cache it reads."""

    cache: Path
    backbone: str
    pooling: str
    classifier: str

    @property
    def run_id(self) -> str:
        """'<cache file stem>__<pooling>__<classifier>': two caches of one backbone (tiny.h5, tiny_32px.h5) never collide."""
        return f"{Path(self.cache).name.removesuffix(store.SUFFIX)}__{self.pooling}__{self.classifier}"


@dataclass(frozen=True)
class RowSplit:
    """Which cache rows train and which are evaluated; test rows never enter model selection."""

    train: np.ndarray  # row indices into the cache
    test: np.ndarray
    test_source: str  # "manifest" | "held_out_patients"
    n_failed_dropped: int


@dataclass(frozen=True, eq=False)
class FittedRun:
    """Everything one finished run produced; the results stage turns it into a run record and a model bundle."""

    plan: RunPlan
    config: ClassifyConfig
    feature_attrs: dict
    feature_sha256: str
    task: str
    classes: list[str]
    data: dict  # row and patient counts, class counts, test source, dropped failures
    search: Any  # the fitted GridSearchCV / HalvingGridSearchCV
    threshold: dict | None  # chosen on out-of-fold training scores (binary); None otherwise
    test_metrics: dict
    test_ids: list[str]
    y_test: np.ndarray
    test_score: np.ndarray
    timings: dict
    efficiency: dict | None = None  # classify.efficiency.efficiency_curve, when train_fractions were given
    audit: dict | None = None  # classify.audit: data_audit of the cache + split_levels of this run
    test_meta: dict[str, list[str]] = field(default_factory=dict)  # manifest metadata of the test rows
    subgroups: dict | None = None  # classify.subgroups.subgroup_analysis, when config.subgroups asks for it

    @property
    def estimator(self):
        return self.search.best_estimator_

    @property
    def threshold_value(self) -> float | None:
        return self.threshold["value"] if self.threshold else None


class RunSink(Protocol):
    """Where finished runs go: `prepare` gets the plans after planning and before the first fit."""

    def prepare(self, plans: Sequence[RunPlan]) -> None: ...

    def save(self, run: FittedRun) -> Path: ...


# ---------------------------------------------------------------- validation


def _find_caches(config: ClassifyConfig) -> list[Path]:
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
            store.read_header(unusable[name])  # raises the CacheError that says what is wrong with it
            raise CacheError(
                f"Feature file '{unusable[name]}' is not a complete featx cache; "
                f"rebuild it with `{store.extract_command(unusable[name])}`."
            )
        if name not in complete:
            raise CacheError(
                f"Feature file '{partial[name]}' is incomplete (an extract was interrupted or is still running); "
                f"finish it with `{store.extract_command(partial[name], force=False)}` (it resumes), "
                "or leave it out with --backbone."
            )
    return [complete[name] for name in wanted]


def _check_options(config: ClassifyConfig) -> None:
    if not config.classifiers:
        raise ClassifyError(one_of_message("classifier", "", sorted(classifiers.CLASSIFIERS)))
    for name in config.classifiers:
        classifiers.get_classifier(name)
    for pooling in config.poolings or ():
        if pooling not in POOLINGS:
            raise ClassifyError(one_of_message("pooling", pooling, POOLINGS))
    if config.cv < 2:
        raise ClassifyError(f"The 'cv' parameter must be at least 2 folds. Got {config.cv} instead.")
    check_engine(config.engine)
    efficiency.check_fractions(config.train_fractions)
    efficiency.check_seeds(config.efficiency_seeds)
    audit.check_threshold(config.near_duplicate_threshold)
    if config.subgroups:
        subgroup_auc.parse_age_bands(",".join(str(edge) for edge in config.age_bands))
        if config.subgroup_min < 1:
            raise ClassifyError(f"The subgroup minimum must be at least 1. Got {config.subgroup_min} instead.")
    # The rule is checked on a toy example so a typo fails now, not after the grid search.
    evaluate.choose_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.4, 0.6]), rule=config.threshold_rule)


def _check_same_manifest(headers: Sequence[store.CacheHeader]) -> None:
    by_manifest: dict[str, list[Path]] = {}
    for header in headers:
        by_manifest.setdefault(str(header.attrs.get("manifest_sha256")), []).append(header.path)
    if len(by_manifest) > 1:
        described = "; ".join(
            f"{', '.join(p.name for p in paths)} (manifest {sha[:12]})" for sha, paths in by_manifest.items()
        )
        raise ClassifyError(
            f"The feature files were built from different manifests (manifest_sha256 differs: {described}); "
            "re-extract them from one manifest or choose caches from one with --backbone."
        )


def _poolings_for(header: store.CacheHeader, config: ClassifyConfig) -> list[str]:
    cached = list(header.poolings)
    if not config.poolings:
        return [p for p in POOLINGS if p in cached] + [p for p in cached if p not in POOLINGS]
    for pooling in config.poolings:
        if pooling not in cached:
            raise ClassifyError(
                f"Feature file '{header.path}' has no {pooling!r} embeddings (it holds {sorted(cached)}); "
                f"re-extract with --pooling {','.join(sorted(set(cached) | {pooling}))} --force "
                "or drop it from --pooling."
            )
    return list(config.poolings)


def split_rows(features, config: ClassifyConfig) -> RowSplit:
    """Training and test rows of a cache; rows whose image failed are dropped and counted."""
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


def _check_finite(path: Path, pooling: str) -> None:
    bad, bad_rows = store.count_nonfinite(path, pooling)
    if bad:
        raise ClassifyError(
            f"Feature file '{path}' has {bad} NaN or infinite values in embeddings/{pooling} "
            f"({bad_rows} rows); rebuild it with `{store.extract_command(path)}`."
        )


def plan_runs(config: ClassifyConfig) -> list[RunPlan]:
    """Validate every input before any fit; the runs to do, grouped by cache and pooling.

    Reads each cache's header and row metadata, and streams each planned pooling once to check that every
    embedding is finite (no embedding matrix is held and no file is hashed here). Raises a FeatxError on
    the first problem.
    """
    _check_options(config)
    # verify: every chunk's checksum and the content sha256, so a damaged cache stops here with the fix
    headers = [store.read_header(path, verify=True) for path in _find_caches(config)]
    _check_same_manifest(headers)
    plans = []
    for header in headers:
        poolings = _poolings_for(header, config)
        rows_meta = store.read_rows(header.path)
        rows = split_rows(rows_meta, config)
        _check_classes(rows_meta, rows.test, "test")
        if config.subgroups:
            task = task_for(rows_meta.y, list(rows_meta.classes))
            subgroup_auc.check_subgroups(config.subgroups, list(rows_meta.meta), task, header.path)
        groups = np.asarray(rows_meta.patient_id).astype(str)[rows.train]
        evaluate.grouped_splits(rows_meta.y[rows.train], groups, config.cv, config.seed, classes=rows_meta.classes)
        for pooling in poolings:
            _check_finite(header.path, pooling)
            for classifier in config.classifiers:
                plans.append(RunPlan(header.path, header.backbone, pooling, classifier))
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


def fit_run(
    plan: RunPlan, config: ClassifyConfig, features: store.FeatureSet, data_audit: dict | None = None
) -> FittedRun:
    """Select, refit and evaluate one backbone x pooling x classifier on a loaded FeatureSet.

    `data_audit` (classify.audit.data_audit of this cache and pooling) joins the run's audit as is.
    """
    started_total = time.perf_counter()
    rows = split_rows(features, config)
    classes = [str(c) for c in features.classes]
    task = task_for(features.y, classes)
    y = np.asarray(features.y)
    groups = np.asarray(features.patient_id).astype(str)
    X_train, y_train = features.X[rows.train], y[rows.train]

    selection = select_model(plan.classifier, task, classes, X_train, y_train, groups[rows.train], config)
    search = selection.search

    # The test rows are sliced out only now, after model selection is fixed.
    X_test, y_test = features.X[rows.test], y[rows.test]
    started = time.perf_counter()
    test_score = predict_scores(search.best_estimator_, X_test, task)
    predict_s = time.perf_counter() - started
    threshold_value = selection.threshold["value"] if selection.threshold else None
    test_metrics = evaluate.evaluate_test(task, y_test, test_score, classes, threshold_value)
    run_audit, curve, extra_timings = _audit_and_curve(
        config, task, selection, X_train, y_train, groups[rows.train], X_test, y_test, test_metrics
    )
    if data_audit is not None:
        run_audit = {**data_audit, **run_audit}
    test_meta = {name: np.asarray(values).astype(str)[rows.test].tolist() for name, values in features.meta.items()}
    subgroup_results = None
    if config.subgroups:
        subgroup_results = subgroup_auc.subgroup_analysis(
            y_test, test_score, test_meta, config.subgroups, config.age_bands, config.subgroup_min
        )
    timings = {
        "search_s": selection.search_s,
        "refit_s": float(getattr(search, "refit_time_", 0.0) or 0.0),
        "oof_s": selection.oof_s,
        "predict_s": predict_s,
        "total_s": time.perf_counter() - started_total,
        "n_fits": len(search.cv_results_["params"]) * len(selection.splits) + 1,
        **extra_timings,
    }
    return FittedRun(
        plan=plan,
        config=config,
        feature_attrs=features.attrs,
        feature_sha256=features.sha256,
        task=task,
        classes=classes,
        data=_data_summary(y, groups, rows, classes),
        search=search,
        threshold=selection.threshold,
        test_metrics=test_metrics,
        test_ids=np.asarray(features.ids).astype(str)[rows.test].tolist(),
        y_test=y_test,
        test_score=test_score,
        timings=timings,
        efficiency=curve,
        audit=run_audit,
        test_meta=test_meta,
        subgroups=subgroup_results,
    )


def _audit_and_curve(config, task, selection, X_train, y_train, groups, X_test, y_test, test_metrics):
    """The split-level CV audit and the data-efficiency curve of the chosen configuration; their seconds."""
    best = selection.search.best_estimator_
    run_audit: dict = {"split_levels": None}
    timings = {}
    if config.image_cv:
        run_audit["split_levels"] = audit.split_levels(
            best,
            task,
            X_train,
            y_train,
            groups,
            selection.splits,
            selection.oof_score,
            config.cv,
            config.seed,
            config.n_jobs,
        )
        timings["image_cv_s"] = run_audit["split_levels"]["seconds"]
    curve = None
    if config.train_fractions:
        curve = efficiency.efficiency_curve(
            best,
            task,
            X_train,
            y_train,
            groups,
            X_test,
            y_test,
            config.train_fractions,
            config.efficiency_seeds,
            seed=config.seed,
            run_auc=(test_metrics.get("auc") or {}).get("value"),
            n_jobs=config.n_jobs,
        )
        timings["efficiency_s"] = curve["seconds"]
    return run_audit, curve, timings


def _data_summary(y: np.ndarray, groups: np.ndarray, rows: RowSplit, classes: list[str]) -> dict:
    return {
        "n_train": len(rows.train),
        "n_test": len(rows.test),
        "n_train_patients": len(np.unique(groups[rows.train])),
        "n_test_patients": len(np.unique(groups[rows.test])),
        "class_counts": {
            "train": _class_counts(y[rows.train], classes),
            "test": _class_counts(y[rows.test], classes),
        },
        "test_source": rows.test_source,
        "n_failed_images_dropped": rows.n_failed_dropped,
    }


def _class_counts(y: np.ndarray, classes: list[str]) -> dict[str, int]:
    if y.ndim == 2:
        return {name: int(y[:, k].sum()) for k, name in enumerate(classes)}
    return {name: int(np.sum(y == k)) for k, name in enumerate(classes)}


# ---------------------------------------------------------------- every run


def run_classify(config: ClassifyConfig, sink: RunSink, console=None) -> list[Path]:
    """Validate, then fit every planned run and hand each to `sink` as it finishes; returns what sink.save returned."""
    from rich.console import Console

    from featx.progress import progress_bar

    console = console or Console()
    plans = plan_runs(config)
    sink.prepare(plans)
    written: list[Path] = []
    sha256: dict[Path, str] = {}
    hashes: dict = {}  # image-file hashes of the exact-duplicate audit, shared by caches of the same rows
    loaded_key, features, data_audit = None, None, None
    with fit_backend(config.engine, console), progress_bar(console, unit="runs") as progress:
        bar = progress.add_task("classify", total=len(plans))
        for plan in plans:
            progress.update(bar, description=f"{plan.backbone} / {plan.pooling} / {plan.classifier}")
            if loaded_key != (plan.cache, plan.pooling):  # plans are grouped by cache and pooling: load each once
                features = None
                if plan.cache not in sha256:
                    sha256[plan.cache] = file_sha256(plan.cache)
                features = store.load(plan.cache, plan.pooling, sha256=sha256[plan.cache])
                loaded_key = (plan.cache, plan.pooling)
                rows = split_rows(features, config)
                if rows.test_source == "held_out_patients":
                    progress.console.print(
                        f"[yellow]{plan.cache.name} has no test rows: holding out {HOLDOUT_FRACTION:.0%} of its "
                        f"patients (a seeded hash of each patient id, seed {config.seed}) as the test set.[/yellow]"
                    )
                progress.update(bar, description=f"{plan.backbone} / {plan.pooling}: duplicate audit")
                data_audit = audit.data_audit(
                    features, rows.train, rows.test, rows.test_source, config.near_duplicate_threshold, hashes
                )
                progress.update(bar, description=f"{plan.backbone} / {plan.pooling} / {plan.classifier}")
            written.append(sink.save(fit_run(plan, config, features, data_audit)))
            progress.advance(bar)
        progress.update(bar, description="classify: done")
    return written
