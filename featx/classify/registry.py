"""The CLASSIFIERS registry: name -> (estimator factory, parameter grid, search strategy).

Supporting a new classifier is one `ClassifierSpec` entry. Every estimator here
follows scikit-learn's contract, so GridSearchCV, clone and joblib treat them alike:
- `logreg`: StandardScaler (`estimators.RowBlockScaler`: fitted in row blocks) + LogisticRegression (lbfgs; multinomial for multiclass);
- `xgboost`: `estimators.EarlyStoppingXGB`, an XGBClassifier that stops on an inner
  stratified split (so the large tree caps in the grid cost nothing once the validation
  loss stops falling);
- `dense`: `estimators.DenseHead`, a small Keras head (0 hidden layers = the pooled softmax
  of Paterakis et al.; 256/1024 ReLU units with dropout = their Dense-1024 head).
Multilabel targets ((N, K) 0/1) wrap logreg/xgboost in OneVsRestClassifier (grid keys
prefixed `estimator__`); the dense head uses K sigmoid outputs natively.

TensorFlow and XGBoost are imported lazily, so importing this module stays fast.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Used by the builders below; importing them here also keeps featx.classify.registry.<Class> resolvable
# for joblib bundles pickled while the two classes lived in this module.
from featx.classify.estimators import DenseHead, EarlyStoppingXGB, RowBlockScaler
from featx.classify.evaluate import TASKS
from featx.engines import LOCAL_FITS
from featx.errors import ClassifyError, one_of_message
from featx.runtime import limit_tensorflow_threads

SEARCHES = ("grid", "halving")


# ---------------------------------------------------------------- XGBoost


@functools.lru_cache(maxsize=1)
def xgboost_device() -> str:
    """'cuda' when this xgboost build has CUDA and a GPU answers a one-round probe, else 'cpu'."""
    try:
        import xgboost
    except ImportError:  # pragma: no cover - xgboost is a hard dependency
        return "cpu"
    if not xgboost.build_info().get("USE_CUDA"):
        return "cpu"
    if shutil.which("nvidia-smi") is None and not Path("/proc/driver/nvidia").exists():
        return "cpu"
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe = xgboost.DMatrix(np.array([[0.0], [1.0]], dtype=np.float32), label=np.array([0.0, 1.0]))
            booster = xgboost.train({"device": "cuda", "tree_method": "hist", "verbosity": 1}, probe, num_boost_round=1)
        config = booster.save_config()
        if any("GPU" in str(w.message) or "cuda" in str(w.message).lower() for w in caught) or '"cuda' not in config:
            return "cpu"
        return "cuda"
    except Exception:
        return "cpu"


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class ClassifierSpec:
    """One registered classifier: how to build it, its parameter grid and how that grid is searched.

    Parameters
    ----------
    name : str
        The name `--classifiers` takes (the key in CLASSIFIERS).
    description : str
        One line for listings and the docs.
    build : callable
        ``build(task, n_classes, seed=0, n_jobs=1, quick=False) -> (estimator, param_grid)``; the
        grid keys are parameters of the estimator (``step__param`` inside pipelines).
    search : {"grid", "halving"}, default="grid"
        Exhaustive GridSearchCV, or successive halving over training rows where make_search allows it.
    search_options : dict, default={}
        Halving's ``factor`` (default 3) and ``finalists`` (the most candidates its last round fits on the
        full folds; default: scikit-learn's count), used only for halving searches.
    candidate_probabilities : callable or None, default=None
        ``f(estimator, candidates, X_fit, y_fit, X_eval) -> [predict_proba per candidate]``: fits the
        grid points of one fold together, sharing work (None: one clone per grid point).
    share_key : callable or None, default=None
        ``f(params) -> hashable``: grid points with equal keys are fitted in one task.
    parallel_fits : bool, default=True
        How cpu_split spends the cores: parallel fits of one thread (or a few) each, or one fit at
        a time using every thread (TensorFlow, whose start-up per worker process costs seconds).
    threads_label : str, default="BLAS"
        Whose threads a fit uses ("BLAS", "XGBoost", "TensorFlow"), for the screen.
    set_threads : callable or None, default=None
        ``f(threads) -> threads in effect``, called in this process before its searches, for a
        library whose thread pools are process-wide (TensorFlow).
    uses_gpu : bool, default=False
        Its fits run faster on a GPU: on a cluster engine with GPUs each of its parallel fits
        reserves a share of one (featx.engines.FitCluster), and its candidate_probabilities picks
        the device where the fit runs.
    cheap_audit : bool, default=False
        Its chosen configuration is cheap to fit `cv` more times: the image-level CV audit runs for
        its runs by default (for the other classifiers only with --image-cv-all).
    """

    name: str
    description: str
    build: Callable[..., tuple]  # (task, n_classes, seed, n_jobs, quick) -> (estimator, param_grid)
    search: str = "grid"  # "grid" | "halving" (successive halving on training rows)
    search_options: dict = field(default_factory=dict)  # halving's options: {"factor": int, "finalists": int}
    candidate_probabilities: Callable | None = None  # fits a fold's grid points together (search.FoldSearch)
    share_key: Callable | None = None  # which grid points share that work (None: all of a fold)
    parallel_fits: bool = True  # CPU split: parallel fits (processes), or one fit on every thread
    threads_label: str = "BLAS"  # whose threads a fit uses, for the screen
    set_threads: Callable[[int], int] | None = None  # process-wide thread setting (TensorFlow); -> threads in effect
    uses_gpu: bool = False  # a cluster engine with GPUs gives each of its fits a share of one
    cheap_audit: bool = False  # the image-level CV audit runs for its runs by default


def _one_vs_rest(estimator, grid: dict, n_jobs: int):
    from sklearn.multiclass import OneVsRestClassifier

    # n_jobs None: the labels are fitted one after another; the search decides the parallel fits and threads
    return OneVsRestClassifier(estimator, n_jobs=None), {f"estimator__{key}": values for key, values in grid.items()}


def _build_logreg(task, n_classes, seed=0, n_jobs=1, quick=False):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    # lbfgs on standardised float64 features: on 5k x 2048 dense rows it converges in well under
    # a second across the whole C range (measured: <= 41 iterations at C=10 with tol 1e-6).
    model = Pipeline(
        [
            ("scale", RowBlockScaler()),
            ("clf", LogisticRegression(solver="lbfgs", max_iter=1000, tol=1e-5, random_state=seed)),
        ]
    )
    if quick:
        grid = {"clf__C": [0.01], "clf__class_weight": [None]}
    else:
        grid = {"clf__C": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 1.0, 10.0], "clf__class_weight": [None, "balanced"]}
    if task == "multilabel":
        return _one_vs_rest(model, grid, n_jobs)
    return model, grid


def logreg_path_probabilities(estimator, candidates, X_fit, y_fit, X_eval) -> list[np.ndarray]:
    """Each logreg candidate's predict_proba of X_eval, fitted along the regularisation path.

    The scaler is fitted once per fold; for each class weight the C values are fitted from the
    strongest regularisation up, each lbfgs run warm-started from the previous solution (a nearby
    optimum: few iterations). A multi-label OneVsRest wrapper of that pipeline takes the same path per
    label on one shared scaling (_one_vs_rest_path_probabilities); other grids fit one clone per candidate.
    """
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline

    from featx.classify.search import each_candidate_probabilities

    varied = set().union(*candidates) if candidates else set()
    if (
        isinstance(estimator, OneVsRestClassifier)
        and isinstance(estimator.estimator, Pipeline)
        and varied <= {"estimator__clf__C", "estimator__clf__class_weight"}
        and np.ndim(y_fit) == 2
    ):
        return _one_vs_rest_path_probabilities(estimator.estimator, candidates, X_fit, y_fit, X_eval)
    if not isinstance(estimator, Pipeline) or not varied <= {"clf__C", "clf__class_weight"}:
        return each_candidate_probabilities(estimator, candidates, X_fit, y_fit, X_eval)
    return _path_probabilities(estimator, candidates, X_fit, y_fit, X_eval)


def _one_vs_rest_path_probabilities(pipeline, candidates, X_fit, Y_fit, X_eval) -> list[np.ndarray]:
    """The multi-label fast path: what OneVsRestClassifier(pipeline) with each candidate's parameters gives,
    with the scaling done once per fold for every label (OneVsRest fits the same scaler on the same rows
    once per label) and each label's C values along one warm-started path. A label present or absent in
    every fit row is predicted as that constant, as OneVsRest's constant predictor does."""
    from sklearn.base import clone

    scaler = clone(pipeline.named_steps["scale"]).fit(X_fit)
    Z_fit, Z_eval = scaler.transform(X_fit), scaler.transform(X_eval)
    return _per_label(
        candidates, Y_fit, len(X_eval), lambda local, label: _path_on_scaled(pipeline, local, Z_fit, label, Z_eval)
    )


def _per_label(candidates, Y_fit, n_eval: int, label_probabilities) -> list[np.ndarray]:
    """Each candidate's (n_eval, K) one-vs-rest probabilities, label by label: `label_probabilities(local
    candidates, label column)` answers every candidate for one label that varies in the fit rows (its
    parameters without OneVsRest's ``estimator__`` prefix); a label present or absent in every fit row is
    predicted as that constant, as OneVsRest's constant predictor does."""
    local = [{key.removeprefix("estimator__"): value for key, value in params.items()} for params in candidates]
    Y_fit = np.asarray(Y_fit)
    out = [np.zeros((n_eval, Y_fit.shape[1]), dtype=np.float64) for _ in candidates]
    for k in range(Y_fit.shape[1]):
        label = Y_fit[:, k]
        if np.unique(label).size < 2:
            for proba in out:
                proba[:, k] = float(label[0]) if len(label) else 0.0
            continue
        for proba, label_proba in zip(out, label_probabilities(local, label)):
            proba[:, k] = label_proba[:, 1]
    return out


def _path_probabilities(estimator, candidates, X_fit, y_fit, X_eval) -> list[np.ndarray]:
    from sklearn.base import clone

    scaler = clone(estimator.named_steps["scale"]).fit(X_fit)
    Z_fit, Z_eval = scaler.transform(X_fit), scaler.transform(X_eval)
    return _path_on_scaled(estimator, candidates, Z_fit, y_fit, Z_eval)


def _path_on_scaled(estimator, candidates, Z_fit, y_fit, Z_eval) -> list[np.ndarray]:
    """Each candidate's predict_proba of the scaled Z_eval, its C values fitted warm-started along the path."""
    from sklearn.base import clone

    base = estimator.named_steps["clf"]
    settings = [
        (params.get("clf__class_weight", base.class_weight), params.get("clf__C", base.C)) for params in candidates
    ]
    probabilities: list = [None] * len(candidates)
    model, model_weight = None, object()
    for index in sorted(range(len(candidates)), key=lambda i: (repr(settings[i][0]), settings[i][1])):
        class_weight, C = settings[index]
        if model is None or class_weight != model_weight:
            model, model_weight = clone(base).set_params(class_weight=class_weight, warm_start=True), class_weight
        probabilities[index] = model.set_params(C=C).fit(Z_fit, y_fit).predict_proba(Z_eval)
    return probabilities


def own_candidate_probabilities(estimator, candidates, X_fit, y_fit, X_eval) -> list[np.ndarray]:
    """The estimator's own `candidate_probabilities` fast path (EarlyStoppingXGB, DenseHead) where it has one;
    a clone per candidate otherwise (e.g. inside the multilabel OneVsRestClassifier)."""
    from featx.classify.search import each_candidate_probabilities

    method = getattr(estimator, "candidate_probabilities", None)
    if method is None:
        return each_candidate_probabilities(estimator, candidates, X_fit, y_fit, X_eval)
    return method(candidates, X_fit, y_fit, X_eval)


def xgboost_candidate_probabilities(estimator, candidates, X_fit, y_fit, X_eval) -> list[np.ndarray]:
    """own_candidate_probabilities with XGBoost's device decided here, in the process that fits.

    The estimator was built with the device of the featx process (xgboost_device()), but a Ray task
    may run on a GPU node of a CPU-only driver, or on a CPU node of a GPU driver: each fit uses
    'cuda' exactly where this process sees a GPU that answers, and 'cpu' elsewhere. The local
    engine's worker processes see what the featx process sees, so their device is unchanged.
    """
    names = [key for key in estimator.get_params() if key == "device" or key.endswith("__device")]
    estimator = estimator.set_params(**dict.fromkeys(names, xgboost_device()))
    if _wraps_xgboost(estimator) and np.ndim(y_fit) == 2:
        return _one_vs_rest_xgboost_probabilities(estimator.estimator, candidates, X_fit, y_fit, X_eval)
    return own_candidate_probabilities(estimator, candidates, X_fit, y_fit, X_eval)


def _wraps_xgboost(estimator) -> bool:
    from sklearn.multiclass import OneVsRestClassifier

    return isinstance(estimator, OneVsRestClassifier) and isinstance(estimator.estimator, EarlyStoppingXGB)


def _one_vs_rest_xgboost_probabilities(model: EarlyStoppingXGB, candidates, X_fit, Y_fit, X_eval) -> list[np.ndarray]:
    """The multi-label fast path: what OneVsRestClassifier(model) with each candidate's parameters gives,
    with each label's fold binned once for every candidate (EarlyStoppingXGB.candidate_probabilities)
    instead of once per candidate and label. Each label keeps its own inner split, so every booster is
    the one OneVsRest would train. A label present or absent in every fit row is predicted as that
    constant, as OneVsRest's constant predictor does."""
    return _per_label(
        candidates, Y_fit, len(X_eval), lambda local, label: model.candidate_probabilities(local, X_fit, label, X_eval)
    )


def _logreg_share_key(params: dict):
    """One regularisation path per class weight: the unit of work a fold's logreg candidates share."""
    return repr(params.get("clf__class_weight", params.get("estimator__clf__class_weight")))


def _build_xgboost(task, n_classes, seed=0, n_jobs=1, quick=False):
    device = xgboost_device()
    model = EarlyStoppingXGB(device=device, n_jobs=max(1, n_jobs), random_state=seed)
    if quick:
        grid = {"max_depth": [3], "learning_rate": [0.3], "n_estimators": [50]}
    else:
        # n_estimators is a cap: early stopping picks the tree count (<= 1000) on the inner split.
        grid = {
            "max_depth": [3, 6],
            "learning_rate": [0.1, 0.3],
            "n_estimators": [1000],
            "subsample": [0.8],
            "colsample_bytree": [0.2, 0.5],
            "scale_pos_weight": [1.0, "balanced"],
        }
    if task == "multilabel":
        return _one_vs_rest(model, grid, n_jobs)
    return model, grid


def _build_dense(task, n_classes, seed=0, n_jobs=1, quick=False):
    model = DenseHead(random_state=seed)
    if quick:
        grid = {"hidden_units": [0], "dropout": [0.2], "learning_rate": [3e-3]}
    else:
        grid = {"hidden_units": [0, 256, 1024], "dropout": [0.2, 0.5], "learning_rate": [1e-3, 3e-4]}
    return model, grid


CLASSIFIERS: dict[str, ClassifierSpec] = {
    spec.name: spec
    for spec in (
        ClassifierSpec(
            "logreg",
            "StandardScaler + logistic regression (lbfgs), grid over C and class_weight",
            _build_logreg,
            search="grid",
            candidate_probabilities=logreg_path_probabilities,
            share_key=_logreg_share_key,
            cheap_audit=True,
        ),
        ClassifierSpec(
            "xgboost",
            "XGBoost (hist; CUDA when present) with early stopping, grid over depth, learning rate, trees, "
            "column subsampling and positive-class weight",
            _build_xgboost,
            search="halving",
            # 16 candidates: 16 -> 4 -> 1 keeps one full-data round of 5 fits instead of two (factor 3)
            search_options={"factor": 4},
            candidate_probabilities=xgboost_candidate_probabilities,
            threads_label="XGBoost",
            uses_gpu=True,
        ),
        ClassifierSpec(
            "dense",
            "Keras dense head: pooled softmax (0 hidden) or 256/1024 ReLU units with dropout, Adam, early stopping",
            _build_dense,
            search="halving",
            # 12 candidates, factor 3: 12 -> 4 -> 1. One finalist on the full folds, not scikit-learn's two: the
            # second's five full-fold fits were ~30% of the search (a 1,024-unit head beside a 256-unit one), and
            # the reported CV AUC is then not the better of two full-fold estimates (docs/scale.md)
            search_options={"factor": 3, "finalists": 1},
            candidate_probabilities=own_candidate_probabilities,
            parallel_fits=False,
            threads_label="TensorFlow",
            set_threads=limit_tensorflow_threads,
            uses_gpu=True,  # TensorFlow sees the GPU Ray gives the task (CUDA_VISIBLE_DEVICES)
        ),
    )
}


def get_classifier(name: str) -> ClassifierSpec:
    """The registry entry for `name`; ClassifyError listing the names (with a closest match) otherwise.

    Parameters
    ----------
    name : str
        A key of CLASSIFIERS.

    Returns
    -------
    ClassifierSpec
        The registered entry.
    """
    try:
        return CLASSIFIERS[name]
    except (KeyError, TypeError):
        raise ClassifyError(one_of_message("classifier", name, list(CLASSIFIERS))) from None


def build_classifier(name, task, n_classes, seed=0, n_jobs=1, quick=False):
    """(estimator, param_grid) for classifier `name` on a task; the grid keys match the estimator.

    Parameters
    ----------
    name : str
        A key of CLASSIFIERS; ClassifyError otherwise.
    task : {"binary", "multiclass", "multilabel"}
        ClassifyError for anything else. Multilabel wraps logreg and xgboost in
        OneVsRestClassifier (grid keys prefixed ``estimator__``); the dense head uses K sigmoids.
    n_classes : int
        Number of classes (labels, for multilabel).
    seed : int, default=0
        random_state of the estimator.
    n_jobs : int, default=1
        Threads inside one fit (xgboost); make_search resets it to 1 when fits run in parallel.
    quick : bool, default=False
        One-point grids, for smoke runs.

    Returns
    -------
    estimator : scikit-learn classifier
        Unfitted.
    param_grid : dict[str, list]
        The grid make_search searches.
    """
    spec = get_classifier(name)
    if task not in TASKS:
        raise ClassifyError(one_of_message("task", task, TASKS))
    return spec.build(task, int(n_classes), seed=seed, n_jobs=n_jobs, quick=quick)


def grid_size(grid: dict) -> int:
    """Number of candidates in a parameter grid.

    Parameters
    ----------
    grid : dict[str, list]
        Parameter name -> candidate values.

    Returns
    -------
    int
        The product of the value counts.
    """
    size = 1
    for values in grid.values():
        size *= len(values)
    return size


# Search scheme at scale: above SUBSAMPLE_ABOVE_ROWS training rows the CV search runs on a patient-stratified
# subsample of SUBSAMPLE_ROWS rows (whole patients), and only the chosen candidate is refitted on every row.
SUBSAMPLE_ABOVE_ROWS = 50_000
SUBSAMPLE_ROWS = 25_000


def search_scheme(n_rows: int) -> dict:
    """How a search on `n_rows` training rows uses them: {"scheme": "full" | "patient-subsample", "search_rows",
    "refit_rows"} (search_rows approximate for a subsample: whole patients are drawn)."""
    if n_rows > SUBSAMPLE_ABOVE_ROWS:
        return {"scheme": "patient-subsample", "search_rows": SUBSAMPLE_ROWS, "refit_rows": int(n_rows)}
    return {"scheme": "full", "search_rows": int(n_rows), "refit_rows": int(n_rows)}


# Successive halving's first round fits on about n_rows / factor**(rounds-1) rows per fold and
# scores on a subsample of the fold's held-out rows too; below this many rows that ranking is noise.
HALVING_MIN_ROWS = 2000


def make_search(spec_name, estimator, grid, cv_splits, task="binary", n_jobs=1, seed=0, cluster=LOCAL_FITS):
    """The CV search `featx classify` runs for this classifier: a FoldSearch, exhaustive or by halving.

    Halving's early rounds score candidates on random subsets of both sides of each fold;
    the last round fits the full folds, and subsets never mix patients across a fold. Below
    HALVING_MIN_ROWS training rows those subsets are too small to rank candidates, so small
    datasets, like small grids (quick runs), get the exhaustive grid (see search_strategy).
    The grid points of a fold are fitted together by the spec's candidate_probabilities.

    Parameters
    ----------
    spec_name : str
        A key of CLASSIFIERS.
    estimator : scikit-learn classifier
        From build_classifier.
    grid : dict[str, list]
        From build_classifier.
    cv_splits : iterable of (train_rows, test_rows)
        The patient-grouped folds of evaluate.grouped_splits.
    task : {"binary", "multiclass", "multilabel"}, default="binary"
        Which AUC scores a candidate (scoring's rules).
    n_jobs : int, default=1
        Cores the search may use, split by cpu_split between parallel fits and threads per fit.
    seed : int, default=0
        Seed of successive halving's subsampling.
    cluster : featx.engines.FitCluster, default=LOCAL_FITS
        What the parallel fits run on (cpu_split).

    Returns
    -------
    featx.classify.search.FoldSearch
        Unfitted; ``fit(X, y)`` refits the best candidate on all rows.
    """
    from featx.classify.search import FoldSearch

    spec = get_classifier(spec_name)
    cv_splits = list(cv_splits)
    n_rows = sum(len(test_rows) for _, test_rows in cv_splits)
    split = cpu_split(spec_name, n_jobs, len(cv_splits), cluster)
    return FoldSearch(
        estimator,
        grid,
        cv_splits,
        task=task,
        strategy=search_strategy(spec_name, grid, n_rows),
        factor=int(spec.search_options.get("factor", 3)),
        finalists=spec.search_options.get("finalists"),
        candidate_probabilities=spec.candidate_probabilities,
        share_key=spec.share_key,
        n_jobs=split.parallel_fits,
        threads=split.threads,
        random_state=seed,
    )


def planned_fits(spec_name, grid, n_rows, n_folds, n_classes=2) -> int:
    """The fits make_search's search will make on `n_rows` training rows: grid points x folds per round, + refit.

    Parameters
    ----------
    spec_name : str
        A key of CLASSIFIERS.
    grid : dict[str, list]
        The parameter grid to search.
    n_rows : int
        Training rows.
    n_folds : int
        CV folds.
    n_classes : int, default=2
        Distinct label values (2 for binary and multilabel): halving's smallest round has at least
        n_folds * 2 * n_classes rows.

    Returns
    -------
    int
    """
    from featx.classify.search import count_fits

    return count_fits(planned_rounds(spec_name, grid, n_rows, n_folds, n_classes), n_folds)


def planned_rounds(spec_name, grid, n_rows, n_folds, n_classes=2) -> list:
    """The rounds (search.Round: candidates, rows) make_search's search will run on `n_rows` training rows;
    parameters as planned_fits."""
    from featx.classify.search import search_rounds

    spec = get_classifier(spec_name)
    strategy = search_strategy(spec_name, grid, n_rows)
    factor = int(spec.search_options.get("factor", 3))
    return search_rounds(
        strategy, grid_size(grid), n_rows, factor, n_folds, n_classes, spec.search_options.get("finalists")
    )


@dataclass(frozen=True)
class CpuSplit:
    """How a search spends its cores: parallel fits x library threads per fit (never more than the cores)."""

    parallel_fits: int
    threads: int
    threads_label: str

    def describe(self) -> str:
        fits = "fit" if self.parallel_fits == 1 else "parallel fits"
        threads = "thread" if self.threads == 1 else "threads"
        return f"{self.parallel_fits} {fits} x {self.threads} {self.threads_label} {threads}"


def cpu_split(spec_name, n_jobs, n_folds, cluster=LOCAL_FITS) -> CpuSplit:
    """Split `n_jobs` cores between parallel fits and each fit's own threads, so fits x threads <= n_jobs.

    Parameters
    ----------
    spec_name : str
        A key of CLASSIFIERS.
    n_jobs : int
        Cores to use (featx classify: the usable cores unless --n-jobs says otherwise); -1 with a
        cluster engine: one fit per fold in flight, one thread each.
    n_folds : int
        CV folds: a round's tasks are at least one per fold, so more parallel fits than folds
        would idle.
    cluster : featx.engines.FitCluster, default=LOCAL_FITS
        With n_jobs -1, the cluster's CPUs cap the parallel fits (Ray's pool has an actor per fit and
        refuses more than the cluster's CPUs), and where it has GPUs a classifier that uses them fits
        every fold at once, even the dense head, whose TensorFlow start-up per worker a GPU repays.

    Returns
    -------
    CpuSplit
        parallel_fits = min(n_jobs, n_folds) and threads = n_jobs // parallel_fits for classifiers
        that fit in parallel processes (logreg: BLAS threads, xgboost: nthread); 1 fit x n_jobs
        threads for the dense head (TensorFlow: a worker process would start TensorFlow again and
        retrace its train step, and its matrix products use threads well).
    """
    spec = get_classifier(spec_name)
    if int(n_jobs) == -1:  # a cluster engine: every fold of a round in flight, one thread each
        parallel = spec.parallel_fits or (spec.uses_gpu and cluster.gpus > 0)
        fits = max(1, min(int(n_folds), cluster.cpus or int(n_folds)))
        return CpuSplit(fits if parallel else 1, 1, spec.threads_label)
    n_jobs = max(1, int(n_jobs))
    if not spec.parallel_fits:
        return CpuSplit(1, n_jobs, spec.threads_label)
    parallel = max(1, min(n_jobs, int(n_folds)))
    return CpuSplit(parallel, max(1, n_jobs // parallel), spec.threads_label)


def search_strategy(spec_name, grid, n_rows=None) -> str:
    """The strategy make_search will use for this grid and row count: 'grid' or 'halving'.

    Parameters
    ----------
    spec_name : str
        A key of CLASSIFIERS.
    grid : dict[str, list]
        The parameter grid to search.
    n_rows : int or None, default=None
        Training rows; None leaves the row count out of the decision.

    Returns
    -------
    str
        "halving" when the spec asks for it, the grid has at least 4 points and n_rows is None or
        at least HALVING_MIN_ROWS; "grid" otherwise.
    """
    spec = get_classifier(spec_name)
    big_enough = n_rows is None or n_rows >= HALVING_MIN_ROWS
    return "halving" if spec.search == "halving" and grid_size(grid) >= 4 and big_enough else "grid"
