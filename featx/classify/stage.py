"""Stage two: grouped-CV model selection on cached embeddings.

For every backbone x pooling x classifier: a patient-grouped stratified K-fold
grid search on the training rows, a refit on all of them, out-of-fold scores for
the chosen parameters (the only place a decision threshold may come from), and a
single evaluation on the test rows. Each finished run is handed to a sink (the
results stage's writer, featx.results.records.RunWriter) as a FittedRun.

Everything the user can get wrong is checked before the first fit, from the caches'
headers and row metadata, so a bad cache or flag costs seconds, not a half-finished
grid. Each cache is hashed once per command and each pooling loaded once.

Runs are cached like embeddings: a run whose inputs (run_inputs: the cache's content sha256,
pooling, classifier, estimator settings, grid, search, folds, seed, threshold rule, every
other setting that shapes the run record, library versions) are unchanged since the sink
saved it is not fitted again (`sink.reusable`), unless `force`; its cache is then not even
read beyond its header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from featx.classify import audit, efficiency, evaluate, metadata_floor
from featx.classify import registry as classifiers
from featx.classify import subgroups as subgroup_auc
from featx.classify.scoring import predict_scores, task_for
from featx.config import usable_cores
from featx.engines import LOCAL, LOCAL_FITS, EngineConfig, FitCluster, check_engine, fit_backend
from featx.errors import CacheError, ClassifyError, one_of_message
from featx.extract import store
from featx.extract.backbones import POOLINGS
from featx.files import file_sha256
from featx.runtime import library_versions

TRAIN_SPLITS = ("train", "val")
HOLDOUT_FRACTION = 0.2
# Part of every run's input key: bump it when how a run is fitted changes in a way its other inputs do not show.
INPUT_KEY_VERSION = 1
# ClassifyConfig fields that name which runs to do or how fast, not what a run's record holds: not input-key parts
NOT_INPUTS = ("features_dir", "out_dir", "backbones", "classifiers", "poolings", "n_jobs", "force", "engine", "mlflow")
# issue 17: which external sets score the saved models and whether the metadata floor runs (not what a run's fit holds)
NOT_INPUTS += ("externals", "external_split", "label_map", "metadata_floor")
# settings added after input keys existed: at these values they are left out of the key (old runs stay reusable)
LATE_INPUT_DEFAULTS = {"null_permutations": 0}


ExternalSets = tuple[tuple[str, Path], ...]  # ((name, features folder), ...)
LabelMap = tuple[tuple[str, str], ...]  # ((external class, internal class), ...)


@dataclass(frozen=True)
class ClassifyConfig:
    features_dir: Path = Path("features")
    out_dir: Path = Path("results")
    backbones: tuple[str, ...] | None = None  # None: every complete cache in features_dir
    classifiers: tuple[str, ...] = ("logreg", "xgboost", "dense")
    poolings: tuple[str, ...] | None = None  # None: every pooling each cache holds
    cv: int = 5
    seed: int = 0
    n_jobs: int | None = None  # cores for the fits; None: every usable core (config.usable_cores)
    threshold_rule: str = "youden"
    val_as_test: bool = False
    quick: bool = False
    engine: EngineConfig = LOCAL  # where joblib runs the independent fits (featx/engines): this machine or Ray
    train_fractions: tuple[float, ...] = ()  # data-efficiency curve: shares of training patients; () = no curve
    efficiency_seeds: int = efficiency.DEFAULT_SEEDS
    image_cv: bool = True  # audit: also cross-validate the chosen configuration on plain image folds
    image_cv_all: bool = False  # ... for every classifier, not only those whose fits are cheap (registry cheap_audit)
    near_duplicate_threshold: float = audit.NEAR_DUPLICATE_THRESHOLD
    subgroups: tuple[str, ...] = ()  # metadata columns (or age_band) to report test AUCs per value of
    age_bands: tuple[float, ...] = subgroup_auc.DEFAULT_AGE_BANDS
    subgroup_min: int = subgroup_auc.DEFAULT_MIN_COUNT  # positives and negatives a subgroup needs for its AUC
    force: bool = False  # fit every run, even one whose inputs are unchanged since it was saved
    # issue 17 (classify/external.py, metadata_floor.py, null.py): external sets ((name, features folder), ...)
    # scored by each saved model, their rows ("test" | "all"), external -> internal class names
    # (the API may also pass {name: folder} / "NAME=DIR" and {ext: int} / "EXT=INT,...": external.externals_of and
    # label_map_of read every form; the aliases keep featx.api from coercing them to a tuple of names)
    externals: ExternalSets = ()
    external_split: str = "test"
    label_map: LabelMap = ()
    metadata_floor: bool = True  # the `metadata` floor runs whenever the caches carry manifest metadata columns
    null_permutations: int = 0  # label-permutation null: refits of the chosen configuration per run (0: none)
    mlflow: str | None = None  # MLflow tracking URI the results stage logs each run to (results/tracking.py)


@dataclass(frozen=True)
class RunPlan:
    """One backbone x pooling x classifier to fit, with the cache it reads."""

    cache: Path
    backbone: str
    pooling: str
    classifier: str
    # what planning learnt from the cache's rows: the task, its classes and the training rows
    task: str = field(default="binary", compare=False)
    n_classes: int = field(default=2, compare=False)
    n_train_rows: int = field(default=0, compare=False)

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
    search: Any  # the fitted search.FoldSearch
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
    search_scheme: dict | None = None  # registry.search_scheme of the run, with the rows and patients searched
    null: dict | None = None  # classify.null.permutation_null, when config.null_permutations > 0

    input_key: str = ""  # sha256 of `inputs`: a later command reuses the run while it is unchanged
    inputs: dict = field(default_factory=dict)  # run_inputs(...)

    @property
    def estimator(self):
        return self.search.best_estimator_

    @property
    def threshold_value(self) -> float | None:
        return self.threshold["value"] if self.threshold else None


@dataclass(frozen=True)
class ReusableRun:
    """A run the sink already holds with the same input key: it is not fitted again."""

    path: Path
    cv_auc: float | None
    test_auc: float | None


class RunSink(Protocol):
    """Where finished runs go: `prepare` gets the plans after planning and before the first fit.

    `reusable(plan, input_key)` answers whether the sink holds that run fitted from the same
    inputs (then it is not fitted again); `save` stores a fitted run and returns where.
    """

    def prepare(self, plans: Sequence[RunPlan]) -> None: ...

    def reusable(self, plan: RunPlan, input_key: str) -> ReusableRun | None: ...

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


def rows_of(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """X[rows]: a view where the rows are one increasing run (train or test rows of a manifest in split
    order), a copy otherwise."""
    rows = np.asarray(rows)
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.all(np.diff(rows) == 1):
        return X[int(rows[0]) : int(rows[-1]) + 1]
    return X[rows]


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

    Reads each cache's header and row metadata, verifying each cache once (no embedding matrix is
    held and no file is hashed here). Raises a FeatxError on the first problem. The embeddings'
    finiteness is checked by check_embeddings, for the runs that will be fitted.
    """
    from featx.classify import external, metadata_floor, null

    _check_options(config)
    null.check_permutations(config.null_permutations)
    # verify: every chunk's checksum and the content sha256, so a damaged cache stops here with the fix
    image_config = metadata_floor.without_floor(config)
    headers = [
        store.read_header(path, verify=True)
        for path in _find_caches(image_config)
        if path.stem != metadata_floor.METADATA_FLOOR
    ]
    _check_same_manifest(headers)
    plans = []
    for header in headers:
        poolings = _poolings_for(header, config)
        rows_meta = store.read_rows(header.path)
        rows = split_rows(rows_meta, config)
        _check_classes(rows_meta, rows.test, "test")
        classes = [str(c) for c in rows_meta.classes]
        task = task_for(rows_meta.y, classes)
        if config.subgroups:
            subgroup_auc.check_subgroups(config.subgroups, list(rows_meta.meta), task, header.path)
        groups = np.asarray(rows_meta.patient_id).astype(str)[rows.train]
        evaluate.grouped_splits(rows_meta.y[rows.train], groups, config.cv, config.seed, classes=rows_meta.classes)
        facts = dict(task=task, n_classes=len(classes), n_train_rows=len(rows.train))
        for pooling in poolings:
            for classifier in config.classifiers:
                plans.append(RunPlan(header.path, header.backbone, pooling, classifier, **facts))
    plans += metadata_floor.floor_plans(config, headers, RunPlan)
    external.check_externals(config, plans)
    return plans


def check_embeddings(plans: Sequence[RunPlan]) -> None:
    """Every embedding the plans will read is finite: one chunked pass per (cache, pooling); FeatxError otherwise."""
    for cache, pooling in dict.fromkeys((plan.cache, plan.pooling) for plan in plans):
        _check_finite(cache, pooling)


# ---------------------------------------------------------------- run inputs (what decides reuse)


def cache_content_hash(path: Path) -> str:
    """The content hash a run is keyed on: the content sha256 the store recorded when the cache was finished
    (read from its header: no pass over the file)."""
    return str(store.read_header(path).attrs["content_sha256"])


def _describe(value):
    """Estimator parameters and settings as plain JSON: nested estimators by class path, other objects by type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _describe(item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "get_params"):
        return f"{type(value).__module__}.{type(value).__qualname__}"
    return type(value).__name__


def run_inputs(plan: RunPlan, config: ClassifyConfig, content_hash: str) -> dict:
    """Everything that decides a run's record, as plain JSON: the key of its reuse.

    The cache's content, the pooling, the classifier with every estimator setting and its grid,
    the search strategy, every ClassifyConfig setting but those in NOT_INPUTS (folds, seed,
    threshold rule, split options, audits, curves, subgroups, ...), the input-key version and
    the library versions. Thread and process counts are left out: they change how fast, not what.
    """
    spec = classifiers.get_classifier(plan.classifier)
    estimator, grid = classifiers.build_classifier(
        plan.classifier, plan.task, plan.n_classes, seed=config.seed, quick=config.quick
    )
    params = {
        key: _describe(value)
        for key, value in sorted(estimator.get_params(deep=True).items())
        if not (key == "n_jobs" or key.endswith("__n_jobs"))
    }
    settings = {
        item.name: _describe(getattr(config, item.name))
        for item in dataclasses.fields(config)
        if item.name not in NOT_INPUTS and not _at_late_default(config, item.name)
    }
    scheme = classifiers.search_scheme(plan.n_train_rows)
    search_rows = scheme["search_rows"]
    search = {
        "strategy": classifiers.search_strategy(plan.classifier, grid, search_rows),
        **_describe(spec.search_options),
    }
    if scheme["scheme"] != "full":  # only then: runs fitted before search schemes existed keep their keys
        search["scheme"] = scheme
    return {
        "input_key_version": INPUT_KEY_VERSION,
        "cache_content_sha256": content_hash,
        "pooling": plan.pooling,
        "classifier": plan.classifier,
        "task": plan.task,
        "estimator": {"class": _describe(estimator), "params": params},
        "grid": _describe(grid),
        "search": search,
        "settings": settings,
        "versions": library_versions(),
    }


def _at_late_default(config: ClassifyConfig, name: str) -> bool:
    """A setting added after runs were first keyed, left at the default that means "as before": left out of the
    key, so a run fitted before the setting existed is still reused."""
    return name in LATE_INPUT_DEFAULTS and getattr(config, name) == LATE_INPUT_DEFAULTS[name]


def input_key(inputs: dict) -> str:
    """sha256 of a run's inputs (canonical JSON)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def planned_fits(plan: RunPlan, config: ClassifyConfig) -> int:
    """The fits a run will make: grid points x folds over its search's rounds, the refit, and the fits of
    the image-fold audit and the data-efficiency curve when the config asks for them."""
    return sum(count for count, _ in planned_fit_rows(plan, config))


def planned_fit_rows(plan: RunPlan, config: ClassifyConfig) -> list[tuple[int, float]]:
    """(fits, training rows of each) over a run's planned fits: each search round's candidates x folds on
    that round's share of a fold, the refit on every training row, the analyses' fits on a fold's rows."""
    _, grid = classifiers.build_classifier(plan.classifier, plan.task, plan.n_classes, quick=config.quick)
    n_values = plan.n_classes if plan.task == "multiclass" else 2  # distinct label values (0/1 for multilabel)
    scheme = classifiers.search_scheme(plan.n_train_rows)
    fold_share = (config.cv - 1) / config.cv
    rounds = classifiers.planned_rounds(plan.classifier, grid, scheme["search_rows"], config.cv, n_values)
    return [
        *((r.candidates * config.cv, r.rows * fold_share) for r in rounds),
        (1, float(scheme["refit_rows"])),
        (_analysis_fits(config, plan.classifier), scheme["search_rows"] * fold_share),
    ]


def image_cv_runs(config: ClassifyConfig, classifier: str) -> bool:
    """Whether a run of `classifier` gets the image-level CV audit: --image-cv (the default) for the classifiers
    whose fits are cheap (registry cheap_audit: logreg), --image-cv-all for every one."""
    return config.image_cv and (config.image_cv_all or classifiers.get_classifier(classifier).cheap_audit)


def describe_audits(config: ClassifyConfig) -> str:
    """One line: which audits this command runs, and where the image-level CV audit runs."""
    near = "near and exact duplicates once per cache and pooling"
    if not config.image_cv:
        return f"Audits: {near}; no image-level CV (--no-image-cv)."
    if config.image_cv_all:
        return f"Audits: {near}; image-level CV for every run (--image-cv-all: {config.cv} more fits each)."
    audited = [name for name in config.classifiers if image_cv_runs(config, name)]
    where = f"for the {', '.join(audited)} runs" if audited else "for no run (no cheap classifier among them)"
    return (
        f"Audits: {near}; image-level CV {where} ({config.cv} fits each; --image-cv-all for every classifier, "
        "--no-image-cv for none)."
    )


PROBE_ROWS = 1000  # training rows of the timing probe's one fit per classifier
# Below this many training rows x planned fits a classify takes seconds to a minute or two: no probe (its own
# fits, a dense head's trainer among them, would cost more than the estimate is worth).
PROBE_MIN_ROW_FITS = 500_000


def worth_probing(plans: Sequence[RunPlan], planned: dict) -> bool:
    """True when the planned work is large enough for a timing probe's estimate to be worth its fits."""
    return sum(plan.n_train_rows * planned[plan] for plan in plans) >= PROBE_MIN_ROW_FITS


def describe_plan(plans: Sequence[RunPlan], config: ClassifyConfig, planned: dict) -> str:
    """One line, before any fit: the runs, the training rows of each cache and pooling, the fits per
    classifier and how each search uses its rows (registry.search_scheme)."""
    data = dict.fromkeys((Path(plan.cache).name, plan.pooling, plan.n_train_rows) for plan in plans)
    rows = ", ".join(f"{name}/{pooling} {n:,}" for name, pooling, n in data)
    per: dict[str, int] = {}
    for plan in plans:
        per[plan.classifier] = per.get(plan.classifier, 0) + planned[plan]
    schemes = sorted({classifiers.search_scheme(plan.n_train_rows)["scheme"] for plan in plans})
    subsample = ""
    if "patient-subsample" in schemes:
        subsample = (
            f" (above {classifiers.SUBSAMPLE_ABOVE_ROWS:,} training rows: searched on ~{classifiers.SUBSAMPLE_ROWS:,} "
            "rows of whole patients, the finalist refitted on every row)"
        )
    fits = ", ".join(f"{name} {n:,}" for name, n in per.items())
    return (
        f"Plan: {len(plans)} run(s) on {len(data)} cache/pooling(s) (training rows: {rows}); "
        f"{sum(per.values()):,} fits ({fits}); search {' and '.join(schemes)}{subsample}."
    )


def timing_probe(plans: Sequence[RunPlan], config: ClassifyConfig, X_train, y_train) -> tuple[float | None, float]:
    """(estimated seconds of every planned fit, seconds the probe took): each classifier's first grid point fitted
    on a quarter of PROBE_ROWS training rows and on all of them (a fixed cost per fit and a cost per row),
    extrapolated to the rows of each planned fit (a halving round's share of a fold, the refit's every row:
    planned_fit_rows) and divided by its parallel fits. The rows are a seeded sample of the training rows, not
    the first ones: manifests listed class by class (Kermany's) would give the probe one class. None when no
    classifier could be probed.

    Rough by design: grid points that share work (a regularisation path, one binned matrix) cost less than
    this counts, early stopping varies; it is there so the first screen says minutes or hours.
    """
    from sklearn.model_selection import ParameterGrid

    from featx.classify.search import thread_limit, with_threads

    started = time.perf_counter()
    n = min(PROBE_ROWS, len(y_train))
    sample = np.random.default_rng(config.seed).permutation(len(y_train))[:n]
    X_probe, y_probe = X_train[sample], y_train[sample]
    per_fit: dict[str, tuple[float, float, int]] = {}
    for plan in plans:
        if plan.classifier in per_fit:
            continue
        estimator, grid = classifiers.build_classifier(
            plan.classifier, plan.task, plan.n_classes, seed=config.seed, quick=config.quick
        )
        split = classifiers.cpu_split(plan.classifier, config.n_jobs or 1, config.cv)
        model = with_threads(estimator, split.threads).set_params(**next(iter(ParameterGrid(grid))))
        seconds = []
        for size in (max(2, n // 4), n):  # two sizes: a fixed cost per fit and a cost per row
            began = time.perf_counter()
            try:
                with thread_limit(split.threads):
                    model.fit(X_probe[:size], y_probe[:size])
            except Exception:  # a probe slice can hold one class: no estimate for this classifier
                break
            seconds.append(time.perf_counter() - began)
        if len(seconds) == 2:
            per_row = max(0.0, (seconds[1] - seconds[0]) / max(1, n - max(2, n // 4)))
            fixed = max(0.0, seconds[0] - per_row * max(2, n // 4))
            per_fit[plan.classifier] = (fixed, per_row, split.parallel_fits)
    total = 0.0
    for plan in plans:
        if plan.classifier in per_fit:
            fixed, per_row, parallel = per_fit[plan.classifier]
            total += sum(count * (fixed + per_row * rows) for count, rows in planned_fit_rows(plan, config)) / parallel
    return (total if per_fit else None), time.perf_counter() - started


def _analysis_fits(config: ClassifyConfig, classifier: str) -> int:
    """Fits of the chosen configuration after the search: the image-fold audit, the curve's subsamples and the
    label-permutation null's refits."""
    audit_fits = config.cv if image_cv_runs(config, classifier) else 0
    curve_fits = sum(config.efficiency_seeds for fraction in config.train_fractions if fraction < 1.0)
    return audit_fits + curve_fits + config.null_permutations


# ---------------------------------------------------------------- one run


@dataclass
class Selection:
    """Model selection on training rows only: the search, its OOF scores and threshold."""

    search: Any
    splits: list
    oof_score: np.ndarray
    threshold: dict | None
    search_s: float
    oof_s: float
    rows: np.ndarray | None = None  # the training rows the folds cross-validate; None: every row
    scheme: dict | None = None  # registry.search_scheme, with the rows and patients actually searched


def select_model(
    classifier: str,
    task: str,
    classes: Sequence[str],
    X_train,
    y_train,
    groups,
    config: ClassifyConfig,
    on_fits: Callable[[int], object] | None = None,
    cluster: FitCluster = LOCAL_FITS,
) -> Selection:
    """Grid search, refit and out-of-fold scores. Sees the training rows and nothing else.

    The out-of-fold scores of the chosen candidate are the held-out predictions its search made
    on the same patient-grouped folds (search.FoldSearch.oof_scores_), not five more fits.
    `on_fits(n)` is called as fits finish (the progress bar). `featx bench classify` times this.
    `cluster` (fit_backend's) is where the parallel fits run: a classifier that uses a GPU has each
    of its fits reserve a share of one where the cluster has GPUs.
    """
    n_jobs = resolve_n_jobs(config.n_jobs, config.engine)
    scheme = classifiers.search_scheme(len(y_train))
    cv_rows = None
    if scheme["scheme"] == "patient-subsample":
        # the search's folds on a patient-stratified subsample (whole patients), in training-row numbers:
        # fits read their rows from X_train, and the chosen candidate is refitted on every row
        cv_rows = evaluate.patient_subsample(y_train, groups, scheme["search_rows"], config.seed)
        local = evaluate.grouped_splits(y_train[cv_rows], groups[cv_rows], config.cv, config.seed, classes=classes)
        splits = [(cv_rows[fit], cv_rows[held]) for fit, held in local]
        scheme = {
            **scheme,
            "search_rows": len(cv_rows),
            "search_patients": len(np.unique(np.asarray(groups)[cv_rows])),
            "patients": len(np.unique(groups)),
        }
    else:
        splits = evaluate.grouped_splits(y_train, groups, config.cv, config.seed, classes=classes)
    estimator, grid = classifiers.build_classifier(classifier, task, len(classes), seed=config.seed, quick=config.quick)
    search = classifiers.make_search(
        classifier, estimator, grid, splits, task, n_jobs=n_jobs, seed=config.seed, cluster=cluster
    )
    spec = classifiers.get_classifier(classifier)
    if spec.set_threads is not None:
        spec.set_threads(search.threads)
    started = time.perf_counter()
    with cluster.tasks(spec.uses_gpu, search.n_jobs):
        search.fit(X_train, y_train, on_fits=on_fits)
    search_s = time.perf_counter() - started
    oof = search.oof_scores_
    scored = slice(None) if cv_rows is None else cv_rows
    threshold = None
    if task == "binary":
        threshold = evaluate.choose_threshold(y_train[scored], oof[scored], rule=config.threshold_rule)
    return Selection(search, splits, oof, threshold, search_s, 0.0, cv_rows, scheme)


def fit_run(
    plan: RunPlan,
    config: ClassifyConfig,
    features: store.FeatureSet,
    data_audit: dict | None = None,
    *,
    inputs: dict | None = None,
    on_fits: Callable[[int], object] | None = None,
    cluster: FitCluster = LOCAL_FITS,
) -> FittedRun:
    """Select, refit and evaluate one backbone x pooling x classifier on a loaded FeatureSet.

    `data_audit` (classify.audit.data_audit of this cache and pooling) joins the run's audit as is.
    `inputs` (run_inputs) travel with the run so the sink can record its input key. `on_fits(n)` is
    called as fits finish: the search's, then the audit's and the curve's together. `cluster`: select_model's.
    """
    started_total = time.perf_counter()
    rows = split_rows(features, config)
    classes = [str(c) for c in features.classes]
    task = task_for(features.y, classes)
    y = np.asarray(features.y)
    groups = np.asarray(features.patient_id).astype(str)
    X_train, y_train = rows_of(features.X, rows.train), y[rows.train]

    selection = select_model(
        plan.classifier, task, classes, X_train, y_train, groups[rows.train], config, on_fits, cluster
    )
    search = selection.search

    # The test rows are sliced out only now, after model selection is fixed.
    X_test, y_test = rows_of(features.X, rows.test), y[rows.test]
    started = time.perf_counter()
    test_score = predict_scores(search.best_estimator_, X_test, task)
    predict_s = time.perf_counter() - started
    threshold_value = selection.threshold["value"] if selection.threshold else None
    test_metrics = evaluate.evaluate_test(task, y_test, test_score, classes, threshold_value)
    run_audit, curve, extra_timings = _audit_and_curve(
        config, plan.classifier, task, selection, X_train, y_train, groups[rows.train], X_test, y_test, test_metrics
    )
    if on_fits is not None and _analysis_fits(config, plan.classifier):
        on_fits(_analysis_fits(config, plan.classifier))
    if data_audit is not None:
        run_audit = {**data_audit, **run_audit}
    test_meta = {name: np.asarray(values).astype(str)[rows.test].tolist() for name, values in features.meta.items()}
    subgroup_results = None
    if config.subgroups:
        subgroup_results = subgroup_auc.subgroup_analysis(
            y_test, test_score, test_meta, config.subgroups, config.age_bands, config.subgroup_min
        )
    null_result = None
    if config.null_permutations:
        from featx.classify.null import permutation_null

        null_result = permutation_null(
            search,
            task,
            X_train,
            y_train,
            groups[rows.train],
            X_test,
            y_test,
            config.null_permutations,
            seed=config.seed,
            real_auc=(test_metrics.get("auc") or {}).get("value"),
        )
    timings = {
        "search_s": selection.search_s,
        "refit_s": float(getattr(search, "refit_time_", 0.0) or 0.0),
        "oof_s": selection.oof_s,
        "predict_s": predict_s,
        "total_s": time.perf_counter() - started_total,
        "n_fits": int(search.n_fits_) + _analysis_fits(config, plan.classifier),
        **extra_timings,
        **({"null_s": null_result["seconds"]} if null_result else {}),
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
        search_scheme=selection.scheme,
        null=null_result,
        input_key=input_key(inputs) if inputs else "",
        inputs=inputs or {},
    )


def _audit_and_curve(config, classifier, task, selection, X_train, y_train, groups, X_test, y_test, test_metrics):
    """The split-level CV audit and the data-efficiency curve of the chosen configuration; their seconds.

    Their fits of the chosen configuration run with the search's CPU split: its parallel fits, its threads each.
    """
    from featx.classify.search import with_threads

    search = selection.search
    best = with_threads(search.best_estimator_, search.threads)  # unfitted: both analyses fit clones of it
    n_jobs = search.n_jobs
    run_audit: dict = {"split_levels": None}
    timings = {}
    if config.image_cv and not image_cv_runs(config, classifier):
        run_audit["split_levels_skipped"] = (
            f"image-level CV runs by default for the classifiers whose fits are cheap "
            f"({', '.join(n for n, spec in classifiers.CLASSIFIERS.items() if spec.cheap_audit)}); "
            "--image-cv-all runs it for every classifier"
        )
    if image_cv_runs(config, classifier):
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
            n_jobs,
            rows=selection.rows,
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
            n_jobs=n_jobs,
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


def resolve_n_jobs(n_jobs: int | None, engine: EngineConfig = LOCAL) -> int:
    """Cores for stage two's fits: `n_jobs`; None (or joblib's -1) is every usable core of this machine.

    With a cluster engine, -1 stays -1: every fold of a round in flight at once, one thread each
    (registry.cpu_split), however many CPUs the cluster has.
    """
    if n_jobs is None or int(n_jobs) == -1:
        return -1 if engine.name != "local" and n_jobs is not None else usable_cores()
    if int(n_jobs) < 1:
        raise ClassifyError(
            f"The 'n_jobs' parameter must be a positive number of cores (or -1 for all of them). Got {n_jobs} instead."
        )
    return int(n_jobs)


def describe_cpu_split(classifier_names: Sequence[str], n_jobs: int, cv: int, cluster: FitCluster = LOCAL_FITS) -> str:
    """One line: the cores used and, per classifier, parallel fits x library threads per fit.

    Starts the process-wide pools that need it (TensorFlow's), so the threads said are those in effect.
    """
    parts = []
    for name in dict.fromkeys(classifier_names):
        split = classifiers.cpu_split(name, n_jobs, cv, cluster)
        spec = classifiers.get_classifier(name)
        if spec.set_threads is not None:
            split = replace(split, threads=spec.set_threads(split.threads))
        parts.append(f"{name} {split.describe()}")
    cores = "every fold of a round at once" if n_jobs == -1 else f"{n_jobs} of {usable_cores()} usable cores"
    return f"{cores}: {'; '.join(parts)}"


def describe_gpu_shares(classifier_names: Sequence[str], n_jobs: int, cv: int, cluster: FitCluster) -> str:
    """One line: what each classifier's parallel fits reserve of the cluster's GPUs."""
    parts = []
    for name in dict.fromkeys(classifier_names):
        spec = classifiers.get_classifier(name)
        split = classifiers.cpu_split(name, n_jobs, cv, cluster)
        parts.append(cluster.describe(name, spec.uses_gpu, split.parallel_fits))
    return f"{cluster.gpus} GPU(s) in the cluster: {'; '.join(parts)}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _auc_text(value) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"


def _run_line(plan: RunPlan, run: FittedRun) -> str:
    test = run.test_metrics.get("auc") or {}
    ci = ""
    if test.get("ci_low") is not None and test.get("ci_high") is not None:
        ci = f" [{test['ci_low']:.3f}, {test['ci_high']:.3f}]"
    search = run.search
    best = int(search.best_index_)
    cv_mean = float(search.cv_results_["mean_test_score"][best])
    cv_std = float(search.cv_results_["std_test_score"][best])
    return (
        f"[green]fitted[/green] {plan.run_id}: CV AUC {_auc_text(cv_mean)} ± {cv_std:.3f}, "
        f"test AUC {_auc_text(test.get('value'))}{ci} ({run.timings['n_fits']} fits, {run.timings['total_s']:.1f} s)"
    )


def run_classify(config: ClassifyConfig, sink: RunSink, console=None) -> list[Path]:
    """Validate, reuse the runs whose inputs are unchanged, fit the others; returns every run's path in plan order.

    Each fitted run is handed to `sink.save` as it finishes and reported in a line with its CV
    and test AUC; one progress bar counts the fits of every run to fit (grid points x folds over
    each search's rounds, refits, audits and curves), with rate and ETA from the first finished task.
    """
    from rich.console import Console

    from featx.progress import progress_bar

    console = console or Console()
    config = replace(config, n_jobs=resolve_n_jobs(config.n_jobs, config.engine))
    plans = plan_runs(config)
    sink.prepare(plans)
    content: dict[Path, str] = {}
    paths: dict[RunPlan, Path] = {}
    to_fit: list[tuple[RunPlan, dict]] = []
    for plan in plans:
        if plan.cache not in content:
            content[plan.cache] = cache_content_hash(plan.cache)
        inputs = run_inputs(plan, config, content[plan.cache])
        reused = None if config.force else sink.reusable(plan, input_key(inputs))
        if reused is None:
            to_fit.append((plan, inputs))
            continue
        paths[plan] = reused.path
        console.print(
            f"[dim]reused[/dim] {plan.run_id}: inputs unchanged, CV AUC {_auc_text(reused.cv_auc)}, "
            f"test AUC {_auc_text(reused.test_auc)}"
        )
    if paths:
        console.print(
            f"{len(paths)} of {len(plans)} runs reused (inputs unchanged since they were fitted; --force re-fits them); "
            f"{len(to_fit)} to fit."
        )
    if not to_fit:
        return [paths[plan] for plan in plans]

    check_embeddings([plan for plan, _ in to_fit])
    sha256: dict[Path, str] = {}
    image_hashes: dict = {}  # image-file hashes of the exact-duplicate audit, shared by caches of the same rows
    loaded_key, features, data_audit = None, None, None
    names = [plan.classifier for plan, _ in to_fit]
    with fit_backend(config.engine, console) as cluster, progress_bar(console, unit="fits") as progress:
        progress.console.print(f"CPU: {describe_cpu_split(names, config.n_jobs, config.cv, cluster)}.")
        progress.console.print(describe_audits(config))
        if cluster.engine != "local":
            progress.console.print(f"Ray: {describe_gpu_shares(names, config.n_jobs, config.cv, cluster)}.")
        planned = {plan: planned_fits(plan, config) for plan, _ in to_fit}
        progress.console.print(describe_plan([plan for plan, _ in to_fit], config, planned))
        bar = progress.add_task(f"classify: {len(to_fit)} runs", total=sum(planned.values()))
        done = 0
        for plan, inputs in to_fit:
            progress.update(bar, description=f"{plan.backbone} / {plan.pooling} / {plan.classifier}")
            if loaded_key != (plan.cache, plan.pooling):  # plans are grouped by cache and pooling: load each once
                features = None
                if plan.cache not in sha256:
                    sha256[plan.cache] = file_sha256(plan.cache)
                features = store.load(plan.cache, plan.pooling, sha256=sha256[plan.cache])
                loaded_key = (plan.cache, plan.pooling)
                rows = split_rows(features, config)
                if done == 0 and worth_probing([p for p, _ in to_fit], planned):  # a probe on the first matrix
                    estimate, probe_s = timing_probe(
                        [p for p, _ in to_fit], config, rows_of(features.X, rows.train), features.y[rows.train]
                    )
                    probed = f"{min(PROBE_ROWS, len(rows.train)):,} rows, {probe_s:.1f} s"
                    progress.console.print(
                        f"Estimated fitting time: about {_duration(estimate)} (a timing probe: one fit per classifier "
                        f"on {probed}; rough)."
                        if estimate is not None
                        else f"No time estimate: no classifier could be fitted on the timing probe's {probed}."
                    )
                if rows.test_source == "held_out_patients":
                    progress.console.print(
                        f"[yellow]{plan.cache.name} has no test rows: holding out {HOLDOUT_FRACTION:.0%} of its "
                        f"patients (a seeded hash of each patient id, seed {config.seed}) as the test set.[/yellow]"
                    )
                progress.update(bar, description=f"{plan.backbone} / {plan.pooling}: duplicate audit")
                data_audit = audit.data_audit(
                    features,
                    rows.train,
                    rows.test,
                    rows.test_source,
                    config.near_duplicate_threshold,
                    image_hashes,
                    near_skipped=metadata_floor.near_duplicates_skipped(plan.backbone),
                )
                progress.update(bar, description=f"{plan.backbone} / {plan.pooling} / {plan.classifier}")
            assert features is not None
            run = fit_run(
                plan,
                config,
                features,
                data_audit,
                inputs=inputs,
                on_fits=lambda n: progress.advance(bar, n),
                cluster=cluster,
            )
            done += run.timings["n_fits"]
            if run.timings["n_fits"] != planned[plan]:  # an estimate that missed: the total follows the facts
                total = progress.tasks[0].total or 0
                progress.update(bar, total=total + run.timings["n_fits"] - planned[plan], completed=done)
            paths[plan] = sink.save(run)
            progress.console.print(_run_line(plan, run))
        progress.update(bar, description=f"classify: {len(to_fit)} runs fitted")
    return [paths[plan] for plan in plans]
