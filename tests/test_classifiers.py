"""classify/registry.py and classify/estimators.py: the registry, make_search, the early-stopping XGBoost wrapper,
the Keras DenseHead."""

from __future__ import annotations

import shutil

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

from featx.classify import evaluate
from featx.classify import registry as classifiers
from featx.classify.estimators import DenseHead, EarlyStoppingXGB
from featx.classify.registry import CLASSIFIERS, build_classifier, get_classifier, make_search
from featx.classify.search import FoldSearch, with_threads
from featx.errors import ClassifyError


def _embeddings(n_patients=80, rows=3, dim=24, signal=1.2, n_classes=2, seed=0, multilabel=False):
    """Patient-grouped synthetic embeddings; the class moves the first few dimensions."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), rows)
    if multilabel:
        patient_y = rng.integers(0, 2, (n_patients, n_classes))
        y = patient_y[groups]
        X = rng.normal(size=(len(groups), dim))
        X[:, :n_classes] += signal * y
    else:
        patient_y = np.arange(n_patients) % n_classes
        y = patient_y[groups]
        X = rng.normal(size=(len(groups), dim))
        for k in range(n_classes):
            X[:, k] += signal * (y == k)
    return X.astype(np.float32), y, groups


def _search_auc(name, task, X, y, groups, n_classes):
    estimator, grid = build_classifier(name, task, n_classes, seed=0, quick=True)
    splits = evaluate.grouped_splits(y, groups, 3, seed=0)
    search = make_search(name, estimator, grid, splits, task, n_jobs=1, seed=0)
    search.fit(X, y)
    return search


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown_classifier_sentence():
    assert {"logreg", "xgboost", "dense"} <= set(CLASSIFIERS)
    assert all(spec.search in classifiers.SEARCHES for spec in CLASSIFIERS.values())
    with pytest.raises(
        ClassifyError, match=r"'classifier' parameter must be one of .*'xgbost'.*did you mean 'xgboost'"
    ):
        get_classifier("xgbost")
    with pytest.raises(ClassifyError, match="'task' parameter"):
        build_classifier("logreg", "regression", 2)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("quick", [False, True])
def test_every_grid_key_is_a_parameter_of_its_estimator(name, task, quick):
    estimator, grid = build_classifier(name, task, 3, quick=quick)
    assert grid and all(values for values in grid.values())
    for point in ParameterGrid(grid):
        clone(estimator).set_params(**point)  # raises on an unknown key
    if task == "multilabel" and name != "dense":
        assert all(key.startswith("estimator__") for key in grid)


def test_default_grids_cover_the_published_searches():
    _, logreg = build_classifier("logreg", "binary", 2)
    assert min(logreg["clf__C"]) <= 1e-4 and max(logreg["clf__C"]) >= 10 and len(logreg["clf__C"]) >= 7
    assert logreg["clf__class_weight"] == [None, "balanced"]
    _, dense = build_classifier("dense", "binary", 2)
    assert dense["hidden_units"] == [0, 256, 1024]
    _, xgb = build_classifier("xgboost", "binary", 2)
    assert "balanced" in xgb["scale_pos_weight"] and len(xgb["max_depth"]) >= 2 and len(xgb["learning_rate"]) >= 2


def test_make_search_strategy_follows_the_registry_and_quick_grids_stay_exhaustive():
    n_rows = classifiers.HALVING_MIN_ROWS
    rows = np.arange(n_rows)
    big_splits = [(np.setdiff1d(rows, part), part) for part in np.array_split(rows, 5)]
    _X, y, groups = _embeddings(n_patients=30)
    small_splits = evaluate.grouped_splits(y, groups, 3, 0)
    for name, spec in CLASSIFIERS.items():
        estimator, grid = build_classifier(name, "binary", 2)
        search = make_search(name, estimator, grid, big_splits, "binary")
        assert isinstance(search, FoldSearch) and search.strategy == spec.search
        assert classifiers.search_strategy(name, grid, n_rows) == spec.search
        # too few rows for halving's early rounds to rank anything: the exhaustive grid
        assert make_search(name, estimator, grid, small_splits, "binary").strategy == "grid"
        assert classifiers.search_strategy(name, grid, len(y)) == "grid"
        estimator, grid = build_classifier(name, "binary", 2, quick=True)
        assert make_search(name, estimator, grid, big_splits, "binary").strategy == "grid"


@pytest.mark.parametrize(
    ("name", "n_jobs", "expected"),
    [
        ("logreg", 8, (5, 1)),  # no more parallel fits than folds: 5 x 1 thread
        ("logreg", 16, (5, 3)),
        ("xgboost", 2, (2, 1)),
        ("xgboost", 1, (1, 1)),
        ("dense", 8, (1, 8)),  # TensorFlow: one process, all its threads
    ],
)
def test_cpu_split_never_runs_more_threads_than_cores(name, n_jobs, expected):
    split = classifiers.cpu_split(name, n_jobs, n_folds=5)
    assert (split.parallel_fits, split.threads) == expected
    assert split.parallel_fits * split.threads <= n_jobs
    estimator, grid = build_classifier(name, "binary", 2)
    rows = np.arange(50)
    search = make_search(name, estimator, grid, [(rows[10:], rows[:10])] * 5, "binary", n_jobs=n_jobs)
    assert (search.n_jobs, search.threads) == expected


def test_parallel_fits_give_each_fit_its_threads_and_leave_other_n_jobs_alone():
    xgb = EarlyStoppingXGB(n_jobs=4)
    assert with_threads(xgb, 1).n_jobs == 1
    logreg, _ = build_classifier("logreg", "binary", 2)
    assert with_threads(logreg, 3).get_params()["clf__n_jobs"] is None  # not a thread count: untouched
    wrapped, _ = build_classifier("xgboost", "multilabel", 3, n_jobs=4)
    threaded = with_threads(wrapped, 2)
    assert threaded.get_params()["estimator__n_jobs"] == 2 and threaded.n_jobs is None


# ---------------------------------------------------------------- signal and noise


@pytest.mark.parametrize("name", ["logreg", "xgboost", "dense"])
def test_a_known_signal_is_found_and_noise_sits_near_chance(name):
    X, y, groups = _embeddings(n_patients=100, signal=1.5, seed=1)
    X_test, y_test, _ = _embeddings(n_patients=60, signal=1.5, seed=2)
    search = _search_auc(name, "binary", X, y, groups, 2)
    assert search.best_score_ > 0.85
    assert evaluate.auc("binary", y_test, search.predict_proba(X_test)[:, 1]) > 0.85

    noise_X, noise_y, noise_groups = _embeddings(n_patients=100, signal=0.0, seed=3)
    noise_test_X, noise_test_y, _ = _embeddings(n_patients=100, signal=0.0, seed=4)
    search = _search_auc(name, "binary", noise_X, noise_y, noise_groups, 2)
    assert abs(evaluate.auc("binary", noise_test_y, search.predict_proba(noise_test_X)[:, 1]) - 0.5) < 0.1


@pytest.mark.parametrize("name", ["logreg", "xgboost", "dense"])
def test_multiclass_and_multilabel_paths(name):
    X, y, groups = _embeddings(n_patients=90, signal=2.0, n_classes=3, seed=5)
    search = _search_auc(name, "multiclass", X, y, groups, 3)
    proba = search.predict_proba(X)
    assert proba.shape == (len(y), 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert search.best_score_ > 0.8

    X, y, groups = _embeddings(n_patients=90, signal=2.0, n_classes=3, seed=6, multilabel=True)
    search = _search_auc(name, "multilabel", X, y, groups, 3)
    proba = search.predict_proba(X)
    assert proba.shape == (len(y), 3)
    assert search.best_score_ > 0.8


# ---------------------------------------------------------------- XGBoost wrapper


def test_xgboost_early_stopping_stops_early_on_noise_and_round_trips():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 10)).astype(np.float32)
    y = rng.integers(0, 2, 300)
    model = EarlyStoppingXGB(n_estimators=400, learning_rate=0.3, early_stopping_rounds=10).fit(X, y)
    assert model.n_estimators_ < 400 and model.best_iteration_ == model.n_estimators_ - 1
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "booster_")


def test_xgboost_balanced_weight_is_resolved_at_fit_time(tmp_path):
    X, y, _ = _embeddings(n_patients=60, rows=2)
    y = np.where(np.arange(len(y)) % 4 == 0, 0, 1)
    model = EarlyStoppingXGB(n_estimators=20, scale_pos_weight="balanced").fit(X, y)
    assert model.scale_pos_weight_ == pytest.approx((y == 0).sum() / (y == 1).sum())
    path = tmp_path / "xgb.joblib"
    joblib.dump(model, path)
    again = joblib.load(path)
    assert np.array_equal(again.predict_proba(X), model.predict_proba(X))
    with pytest.raises(ValueError, match="balanced"):
        EarlyStoppingXGB(scale_pos_weight="even").fit(X, y)


class _ProbeBooster:
    def __init__(self, config: str):
        self._config = config

    def save_config(self) -> str:
        return self._config


@pytest.mark.parametrize(
    "cuda_build, probe, expected",
    [
        (True, "works", "cuda"),
        (False, "works", "cpu"),  # a CPU-only xgboost build is never probed
        (True, "raises", "cpu"),
        (True, "warns", "cpu"),  # xgboost fell back to the CPU and said so
        (True, "ran on cpu", "cpu"),  # the booster's own config does not name cuda
    ],
)
def test_xgboost_device_is_cuda_only_when_a_cuda_build_answers_the_probe(monkeypatch, cuda_build, probe, expected):
    """A machine with a GPU driver, faked: the answer turns on the build flag and the one-round probe alone."""
    import warnings

    import xgboost

    probes = []

    def train(params, dtrain, num_boost_round):
        probes.append(params["device"])
        if probe == "raises":
            raise xgboost.core.XGBoostError("no CUDA-capable device is detected")
        if probe == "warns":
            warnings.warn("No visible GPU is found, setting device to CPU.", UserWarning, stacklevel=1)
        device = '"cpu"' if probe == "ran on cpu" else '"cuda:0"'
        return _ProbeBooster('{"learner": {"generic_param": {"device": ' + device + "}}}")

    monkeypatch.setattr(xgboost, "build_info", lambda: {"USE_CUDA": cuda_build})
    monkeypatch.setattr(xgboost, "train", train)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    classifiers.xgboost_device.cache_clear()
    try:
        assert classifiers.xgboost_device() == expected
        assert probes == (["cuda"] if cuda_build else [])
    finally:
        classifiers.xgboost_device.cache_clear()


def test_bundles_pickled_under_the_registry_path_still_load():
    """Joblib bundles name an estimator by class path; the classes lived in registry.py until they moved."""
    import io
    import pickle

    unpickler = pickle.Unpickler(io.BytesIO())
    assert unpickler.find_class("featx.classify.registry", "DenseHead") is DenseHead
    assert unpickler.find_class("featx.classify.registry", "EarlyStoppingXGB") is EarlyStoppingXGB


# ---------------------------------------------------------------- DenseHead


def test_dense_head_is_deterministic_and_round_trips_through_joblib(tmp_path):
    X, y, _ = _embeddings(n_patients=50, signal=1.0)
    model = DenseHead(hidden_units=16, dropout=0.2, max_epochs=15, random_state=3).fit(X, y)
    again = DenseHead(hidden_units=16, dropout=0.2, max_epochs=15, random_state=3).fit(X, y)
    assert np.allclose(model.predict_proba(X), again.predict_proba(X), atol=1e-6)
    path = tmp_path / "dense.joblib"
    joblib.dump(model, path)
    loaded = joblib.load(path)
    assert np.array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert np.array_equal(loaded.classes_, model.classes_)
    assert clone(model).get_params() == model.get_params()


def test_dense_head_keeps_the_global_random_state_untouched():
    X, y, _ = _embeddings(n_patients=20)
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    DenseHead(max_epochs=2).fit(X, y)
    assert np.random.random() == expected


def test_dense_head_multilabel_uses_independent_sigmoids():
    X, y, _ = _embeddings(n_patients=60, n_classes=3, signal=2.0, multilabel=True)
    model = DenseHead(max_epochs=30, learning_rate=3e-3).fit(X, y)
    proba = model.predict_proba(X)
    assert proba.shape == y.shape and not np.allclose(proba.sum(axis=1), 1.0)
    assert model.predict(X).shape == y.shape
    assert evaluate.auc("multilabel", y, proba) > 0.8


def _dense_for_checks():
    return DenseHead(max_epochs=40, learning_rate=1e-2, batch_size=32, validation_fraction=0.0)


def _failed_checks(estimator, expected_failed_checks=None):
    from sklearn.utils.estimator_checks import check_estimator

    rows = check_estimator(estimator, on_fail=None, expected_failed_checks=expected_failed_checks)
    return [f"{row['check_name']}: {row['exception']}" for row in rows if row["status"] == "failed"]


def test_dense_head_passes_the_scikit_learn_estimator_checks():
    assert not _failed_checks(_dense_for_checks())


def test_early_stopping_xgb_passes_the_scikit_learn_estimator_checks():
    expected = {
        "check_sample_weight_equivalence_on_dense_data": (
            "the inner early-stopping split is drawn over rows, so repeating a row is not the same as weighting it"
        )
    }
    assert not _failed_checks(EarlyStoppingXGB(n_estimators=30), expected)


def test_multilabel_logreg_shares_the_scaling_and_the_path_across_labels_with_one_vs_rest_answers():
    from featx.classify.registry import build_classifier, logreg_path_probabilities
    from featx.classify.search import each_candidate_probabilities

    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 12)).astype(np.float32) + 3.0
    Y = (X[:, :3] + rng.normal(scale=0.7, size=(240, 3)) > 3.0).astype(np.int8)
    Y[:200, 2] = 0  # a label absent from every fit row: OneVsRest's constant predictor
    estimator, _ = build_classifier("logreg", "multilabel", 3)
    candidates = [
        {"estimator__clf__C": C, "estimator__clf__class_weight": weight}
        for weight in (None, "balanced")
        for C in (1e-3, 1e-2, 1.0)
    ]
    fast = logreg_path_probabilities(estimator, candidates, X[:200], Y[:200], X[200:])
    slow = each_candidate_probabilities(estimator, candidates, X[:200], Y[:200], X[200:])
    assert len(fast) == len(slow) == len(candidates)
    for mine, theirs in zip(fast, slow):
        assert mine.shape == theirs.shape == (40, 3)
        np.testing.assert_allclose(mine, theirs, atol=2e-3)  # warm starts land within lbfgs's tolerance
        assert np.all(mine[:, 2] == 0.0)


def test_multilabel_xgboost_bins_each_label_once_for_every_candidate_with_one_vs_rest_answers(monkeypatch):
    from featx.classify import estimators
    from featx.classify.registry import build_classifier, xgboost_candidate_probabilities
    from featx.classify.search import each_candidate_probabilities

    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 12)).astype(np.float32)
    Y = (X[:, :3] + rng.normal(scale=0.7, size=(240, 3)) > 0.5).astype(np.int8)
    Y[:200, 2] = 0  # a label absent from every fit row: OneVsRest's constant predictor
    estimator, _ = build_classifier("xgboost", "multilabel", 3)
    candidates = [
        {"estimator__max_depth": depth, "estimator__n_estimators": 40, "estimator__scale_pos_weight": weight}
        for depth in (2, 3)
        for weight in (1.0, "balanced")
    ]
    binned = []
    build = estimators.EarlyStoppingXGB._matrices
    monkeypatch.setattr(
        estimators.EarlyStoppingXGB, "_matrices", lambda self, *args: binned.append(1) or build(self, *args)
    )
    fast = xgboost_candidate_probabilities(estimator, candidates, X[:200], Y[:200], X[200:])
    assert len(binned) == 2  # one binned fold per label that varies, shared by the four candidates
    binned.clear()
    slow = each_candidate_probabilities(estimator, candidates, X[:200], Y[:200], X[200:])
    assert len(binned) == 8
    assert len(fast) == len(slow) == len(candidates)
    for mine, theirs in zip(fast, slow):
        assert mine.shape == theirs.shape == (40, 3)
        np.testing.assert_array_equal(mine, theirs)  # the very boosters OneVsRest trains
        assert np.all(mine[:, 2] == 0.0)


@pytest.mark.parametrize(("n_train", "expected"), [(40, 16), (400, 50), (3_177, 128), (80_000, 128)])
def test_dense_head_batches_give_small_sets_at_least_8_steps_and_keep_128_on_large_ones(n_train, expected):
    from featx.classify.estimators import epoch_batch_size

    assert epoch_batch_size(128, n_train) == expected


def test_a_dense_head_records_the_batch_it_trained_with():
    from featx.classify import estimators

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    head = estimators.DenseHead(max_epochs=3, random_state=0).fit(X, y)
    assert head.batch_size_ == 42  # 340 inner training rows: 8 steps of 42, not 3 of 128
