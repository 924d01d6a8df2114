"""classify/search.py: FoldSearch finds what scikit-learn's searches find, counts its fits, and its fast paths
(logreg's regularisation path, XGBoost's shared binned matrix, stacked dense heads) give each candidate's answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV

from featx.classify import estimators, evaluate
from featx.classify.estimators import DenseHead, EarlyStoppingXGB
from featx.classify.registry import build_classifier, logreg_path_probabilities, make_search, planned_fits
from featx.classify.scoring import AUCScorer, predict_scores
from featx.classify.search import FoldSearch, Round, count_fits, each_candidate_probabilities, search_rounds
from featx.errors import ClassifyError


def _data(n_patients=90, rows=3, dim=12, signal=0.8, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), rows)
    y = (np.arange(n_patients) % 2)[groups]
    X = rng.normal(size=(len(groups), dim)).astype(np.float32)
    X[:, :3] += signal * y[:, None]
    return X, y, groups


def test_halving_rounds_follow_scikit_learn_and_end_on_the_full_folds():
    assert search_rounds("grid", 14, 5215) == [Round(14, 5215, 5215)]
    # scikit-learn's rounds (min_resources="exhaust"): 5215 // 16 = 325 rows, then x4; the last on all rows
    assert search_rounds("halving", 16, 5215, factor=4) == [
        Round(16, 325, 5215),
        Round(4, 1300, 5215),
        Round(1, 5215, 5215),
    ]
    assert search_rounds("halving", 12, 5215, factor=3) == [
        Round(12, 579, 5215),
        Round(4, 1737, 5215),
        Round(2, 5215, 5215),
    ]
    assert count_fits(search_rounds("halving", 12, 5215), n_folds=5) == (12 + 4 + 2) * 5 + 1


def test_finalists_cap_only_the_last_round_of_a_halving_search():
    assert search_rounds("halving", 12, 5215, factor=3, finalists=1) == [
        Round(12, 579, 5215),
        Round(4, 1737, 5215),
        Round(1, 5215, 5215),
    ]
    assert search_rounds("halving", 12, 5215, factor=3, finalists=5) == search_rounds("halving", 12, 5215, factor=3)
    assert search_rounds("grid", 12, 5215, finalists=1) == [Round(12, 5215, 5215)]  # a grid has no finalists
    with pytest.raises(ClassifyError, match="'finalists' must be at least 1. Got 0"):
        search_rounds("halving", 12, 5215, finalists=0)


def test_one_finalist_is_the_best_of_the_round_before_and_the_early_rounds_are_unchanged():
    X, y, groups = _data(n_patients=200, dim=8, signal=0.3, seed=7)
    splits = evaluate.grouped_splits(y, groups, 5, seed=0)
    grid = {"C": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "class_weight": [None, "balanced"]}
    both = FoldSearch(LogisticRegression(max_iter=1000), grid, splits, strategy="halving", factor=3).fit(X, y)
    one = FoldSearch(LogisticRegression(max_iter=1000), grid, splits, strategy="halving", factor=3, finalists=1)
    one.fit(X, y)
    assert both.n_candidates_ == [12, 4, 2] and one.n_candidates_ == [12, 4, 1]
    assert one.n_fits_ == (12 + 4 + 1) * 5 + 1
    early = [i for i, r in enumerate(both.cv_results_["iter"]) if r < 2]
    assert np.array_equal(one.cv_results_["mean_test_score"][early], both.cv_results_["mean_test_score"][early])
    assert list(one.cv_results_["iter"][12:16]) == [1] * 4
    round_1 = {repr(one.cv_results_["params"][i]): one.cv_results_["mean_test_score"][i] for i in range(12, 16)}
    assert round_1[repr(one.best_params_)] == max(round_1.values())  # the finalist: round 1's best (ties: either)
    assert one.cv_results_["n_resources"][one.best_index_] == len(y)  # fitted on the full folds
    assert np.count_nonzero(one.oof_scores_) == len(y)
    # the finalist's full-fold scores are those the two-finalist search gave it
    same = [
        i
        for i, r in enumerate(both.cv_results_["iter"])
        if r == 2 and both.cv_results_["params"][i] == one.best_params_
    ]
    assert len(same) == 1
    assert one.best_score_ == both.cv_results_["mean_test_score"][same[0]]


def test_the_grid_search_finds_what_grid_search_cv_finds():
    X, y, groups = _data()
    splits = evaluate.grouped_splits(y, groups, 3, seed=0)
    estimator = LogisticRegression(max_iter=1000)
    grid = {"C": [0.001, 0.01, 0.1, 1.0], "class_weight": [None, "balanced"]}
    ours = FoldSearch(estimator, grid, splits, task="binary").fit(X, y)
    theirs = GridSearchCV(estimator, grid, cv=splits, scoring=AUCScorer("binary")).fit(X, y)
    assert ours.best_params_ == theirs.best_params_
    assert np.allclose(ours.cv_results_["mean_test_score"], theirs.cv_results_["mean_test_score"])
    assert list(ours.cv_results_["rank_test_score"]) == list(theirs.cv_results_["rank_test_score"])
    assert np.allclose(ours.predict_proba(X), theirs.predict_proba(X))


def test_halving_fits_the_rows_and_keeps_the_candidates_scikit_learns_halving_does():
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV

    X, y, groups = _data(n_patients=200, dim=8, signal=0.3, seed=7)
    splits = evaluate.grouped_splits(y, groups, 5, seed=0)
    estimator = LogisticRegression(max_iter=1000)
    grid = {"C": [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0], "class_weight": [None, "balanced"]}
    ours = FoldSearch(estimator, grid, splits, strategy="halving", factor=3, random_state=0).fit(X, y)
    theirs = HalvingGridSearchCV(
        estimator, grid, cv=splits, scoring=AUCScorer("binary"), factor=3, min_resources="exhaust", random_state=0
    ).fit(X, y)
    assert ours.n_candidates_ == theirs.n_candidates_
    assert ours.n_resources_[:-1] == theirs.n_resources_[:-1] and ours.n_resources_[-1] == len(y)
    for round_ in range(len(ours.n_candidates_)):
        mine = [i for i, r in enumerate(ours.cv_results_["iter"]) if r == round_]
        sk = [i for i, r in enumerate(theirs.cv_results_["iter"]) if r == round_]
        assert [ours.cv_results_["params"][i] for i in mine] == [theirs.cv_results_["params"][i] for i in sk]
        if round_ < len(ours.n_candidates_) - 1:  # the last round differs only in fitting every row
            assert np.allclose(ours.cv_results_["mean_test_score"][mine], theirs.cv_results_["mean_test_score"][sk])


def test_out_of_fold_scores_are_the_best_candidate_refitted_on_each_fold():
    X, y, groups = _data(seed=1)
    splits = evaluate.grouped_splits(y, groups, 3, seed=0)
    estimator, grid = build_classifier("xgboost", "binary", 2, quick=True)
    search = make_search("xgboost", estimator, grid, splits, "binary").fit(X, y)
    expected = np.zeros(len(y))
    for fit_rows, eval_rows in splits:
        model = clone(estimator).set_params(**search.best_params_).fit(X[fit_rows], y[fit_rows])
        expected[eval_rows] = predict_scores(model, X[eval_rows], "binary")
    assert np.allclose(search.oof_scores_, expected)


@pytest.mark.parametrize(("strategy", "n_candidates"), [("grid", 6), ("halving", 6)])
def test_progress_counts_every_fit_the_plan_announced(strategy, n_candidates):
    X, y, groups = _data(n_patients=150, seed=2)
    splits = evaluate.grouped_splits(y, groups, 3, seed=0)
    grid = {"C": list(np.logspace(-3, 1, n_candidates))}
    search = FoldSearch(LogisticRegression(), grid, splits, strategy=strategy, factor=2)
    ticks = []
    search.fit(X, y, on_fits=ticks.append)
    assert len(ticks) > 2  # a tick per task, not one per search
    assert sum(ticks) == search.planned_fits(len(y)) == search.n_fits_
    assert search.cv_results_["n_resources"][-1] == len(y)  # the last round fits the full folds
    assert np.count_nonzero(search.oof_scores_) == len(y)


def test_the_answer_does_not_depend_on_parallel_processes():
    X, y, groups = _data(seed=3)
    splits = evaluate.grouped_splits(y, groups, 3, seed=0)
    estimator, grid = build_classifier("logreg", "binary", 2)
    one = make_search("logreg", estimator, grid, splits, "binary", n_jobs=1).fit(X, y)
    two = make_search("logreg", estimator, grid, splits, "binary", n_jobs=2).fit(X, y)
    assert two.n_jobs == 2
    assert one.best_params_ == two.best_params_
    assert np.array_equal(one.cv_results_["mean_test_score"], two.cv_results_["mean_test_score"])
    assert np.array_equal(one.oof_scores_, two.oof_scores_)


def test_a_lone_finalist_is_refitted_beside_the_last_rounds_folds(monkeypatch):
    # with one candidate left the choice is made: the refit is one more parallel task, not a wait at the end
    X, y, groups = _data(seed=4)
    splits = evaluate.grouped_splits(y, groups, 3, seed=0)
    estimator, grid = build_classifier("xgboost", "binary", 2, quick=True)
    one = make_search("xgboost", estimator, grid, splits, "binary", n_jobs=1).fit(X, y)

    def refused(self, X, y, sample_weight=None):
        raise AssertionError("the refit ran in the featx process")

    monkeypatch.setattr(EarlyStoppingXGB, "fit", refused)  # the worker processes keep the real fit
    ticks = []
    two = make_search("xgboost", estimator, grid, splits, "binary", n_jobs=2).fit(X, y, on_fits=ticks.append)
    assert sum(ticks) == two.n_fits_
    assert one.best_params_ == two.best_params_
    assert np.array_equal(one.oof_scores_, two.oof_scores_)
    assert np.array_equal(one.predict_proba(X), two.predict_proba(X))


def test_folds_on_a_subsample_hand_the_fits_that_subsample_and_refit_every_row_here(monkeypatch):
    # stage two's search scheme at scale: the folds cover a patient subsample of the training rows
    from featx.classify import search as search_module

    X, y, groups = _data(n_patients=120, seed=5)
    sub = np.flatnonzero(groups < 80)  # whole patients
    local = evaluate.grouped_splits(y[sub], groups[sub], 3, seed=0)
    estimator, grid = build_classifier("xgboost", "binary", 2, quick=True)
    reference = make_search("xgboost", estimator, grid, local, "binary", n_jobs=1).fit(X[sub], y[sub])

    handed = []
    run_task = search_module._run_task
    monkeypatch.setattr(search_module, "_run_task", lambda *args: handed.append(len(args[4])) or run_task(*args))
    subsampled = make_search(
        "xgboost", estimator, grid, [(sub[fit], sub[held]) for fit, held in local], "binary", n_jobs=1
    ).fit(X, y)
    assert handed and set(handed) == {len(sub)}  # the fits read the subsample's rows, not the whole matrix
    assert np.array_equal(subsampled.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"])
    assert np.array_equal(subsampled.oof_scores_[sub], reference.oof_scores_)
    assert np.array_equal(subsampled.oof_rows_, sub)
    whole = clone(estimator).set_params(**subsampled.best_params_).fit(X, y)  # the refit saw every row
    assert np.array_equal(subsampled.predict_proba(X), whole.predict_proba(X))


def test_a_planned_fit_count_matches_the_search_featx_runs():
    rows = np.arange(3000)
    splits = [(np.setdiff1d(rows, part), part) for part in np.array_split(rows, 5)]
    for name in ("logreg", "xgboost", "dense"):
        estimator, grid = build_classifier(name, "binary", 2)
        search = make_search(name, estimator, grid, splits, "binary")
        assert planned_fits(name, grid, len(rows), 5) == search.planned_fits(len(rows))
    # the dense head's halving keeps one finalist: 12 -> 4 -> 1 candidates
    assert planned_fits("dense", build_classifier("dense", "binary", 2)[1], len(rows), 5) == (12 + 4 + 1) * 5 + 1


# ---------------------------------------------------------------- the fast paths give each candidate's answer


def test_the_logreg_path_gives_each_candidates_answer():
    X, y, _ = _data(n_patients=120, dim=40, seed=4)
    estimator, grid = build_classifier("logreg", "binary", 2)
    candidates = [{"clf__C": c, "clf__class_weight": w} for c in grid["clf__C"] for w in grid["clf__class_weight"]]
    fit_rows, eval_rows = np.arange(0, 270), np.arange(270, len(y))
    path = logreg_path_probabilities(estimator, candidates, X[fit_rows], y[fit_rows], X[eval_rows])
    each = each_candidate_probabilities(estimator, candidates, X[fit_rows], y[fit_rows], X[eval_rows])
    for warm, cold in zip(path, each):  # warm-started lbfgs stops within tol of the same optimum
        assert np.abs(warm - cold).max() < 2e-3


def test_the_shared_binned_matrix_gives_each_xgboost_candidates_booster():
    X, y, _ = _data(n_patients=100, seed=5)
    candidates = [
        {"max_depth": d, "learning_rate": r, "scale_pos_weight": w}
        for d in (2, 4)
        for r in (0.1, 0.3)
        for w in (1.0, "balanced")
    ]
    estimator = EarlyStoppingXGB(n_estimators=60)
    shared = estimator.candidate_probabilities(candidates, X[:200], y[:200], X[200:])
    each = each_candidate_probabilities(estimator, candidates, X[:200], y[:200], X[200:])
    for a, b in zip(shared, each):
        assert np.array_equal(a, b)


def test_stacked_dense_heads_give_each_heads_own_fit():
    X, y, _ = _data(n_patients=80, dim=10, seed=6)
    candidates = [{"hidden_units": h, "dropout": d, "learning_rate": r} for h, d, r in ((0, 0.2, 1e-2), (8, 0.5, 3e-3))]
    estimator = DenseHead(max_epochs=6, patience=2, random_state=3)
    stacked = estimator.candidate_probabilities(candidates, X[:180], y[:180], X[180:])
    estimators._TRAINERS.clear()  # each fit below then builds its own one-head trainer
    each = each_candidate_probabilities(estimator, candidates, X[:180], y[:180], X[180:])
    for a, b in zip(stacked, each):
        assert np.allclose(a, b, atol=1e-6)


def test_a_head_trained_in_a_larger_trainers_slot_gives_its_own_fit():
    # the search's later rounds and the refit train subsets of the first round's heads in its trainer
    X, y, _ = _data(n_patients=80, dim=10, seed=9)
    grid = [{"hidden_units": h, "dropout": d, "learning_rate": 3e-3} for h in (0, 8) for d in (0.2, 0.5)]
    estimator = DenseHead(max_epochs=8, patience=2, random_state=4)
    estimators._TRAINERS.clear()
    estimator.candidate_probabilities(grid, X[:180], y[:180], X[180:])
    subset = estimator.candidate_probabilities([grid[3], grid[1]], X[20:], y[20:], X[:20])
    refit = clone(estimator).set_params(**grid[2]).fit(X, y)
    assert len(estimators._TRAINERS) == 1  # no trainer was built for the subset or the refit
    estimators._TRAINERS.clear()
    alone = [clone(estimator).set_params(**grid[i]).fit(X[20:], y[20:]).predict_proba(X[:20]) for i in (3, 1)]
    for a, b in zip(subset, alone):
        assert np.allclose(a, b, atol=1e-6)
    assert len(estimators._TRAINERS) == 2  # fresh one-head trainers
    fresh = clone(estimator).set_params(**grid[2]).fit(X, y)
    assert (refit.n_epochs_, refit.best_epoch_) == (fresh.n_epochs_, fresh.best_epoch_)
    assert np.allclose(refit.predict_proba(X), fresh.predict_proba(X), atol=1e-6)


def test_a_reused_dense_trainer_gives_a_fresh_trainers_answer():
    X, y, _ = _data(n_patients=60, dim=10, seed=8)
    head = DenseHead(hidden_units=8, max_epochs=5, patience=2, random_state=1)
    estimators._TRAINERS.clear()
    fresh = clone(head).fit(X[:150], y[:150]).predict_proba(X[150:])
    clone(head).fit(X[30:], y[30:])  # the same trainer trained on other rows in between
    assert len(estimators._TRAINERS) == 1
    reused = clone(head).fit(X[:150], y[:150]).predict_proba(X[150:])
    assert np.array_equal(fresh, reused)
