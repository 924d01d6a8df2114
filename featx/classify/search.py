"""The CV search of stage two: a parameter grid on patient-grouped folds, exhaustive or by successive halving.

`FoldSearch` gives what scikit-learn's GridSearchCV / HalvingGridSearchCV give
(`cv_results_`, `best_params_`, `best_score_`, `best_estimator_` refitted on all rows)
and differs where that makes stage two fast without changing what it can find:

- candidates that share work are fitted together, once per fold, by their classifier's
  `candidate_probabilities` (a regularisation path with warm starts, one binned XGBoost
  matrix, one stacked Keras model) instead of one clone at a time;
- every candidate's held-out probabilities are kept, so the out-of-fold scores of the
  chosen candidate (the only source of a decision threshold) come from the search
  itself instead of from five more fits;
- successive halving's last round always fits the full folds (scikit-learn's can stop
  a few rows short), so those out-of-fold scores cover every training row.

Work is split into tasks of (fold, group of candidates that share work); tasks run in
`n_jobs` parallel processes with `threads` library threads each (BLAS through
threadpoolctl, XGBoost's nthread through the estimator's ``n_jobs``). The grouping never
depends on `n_jobs`, so a search gives the same answer however many processes run it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from featx.classify import evaluate
from featx.classify.scoring import scores_from_probabilities
from featx.errors import ClassifyError

STRATEGIES = ("grid", "halving")


@dataclass(frozen=True)
class Round:
    """One round of a search: how many candidates are fitted, on what share of each fold's rows."""

    candidates: int
    rows: int  # the resource: training rows this round stands for (every row in the last round)
    n_rows: int  # all training rows

    @property
    def fraction(self) -> float:
        return self.rows / self.n_rows


def search_rounds(
    strategy: str,
    n_candidates: int,
    n_rows: int,
    factor: int = 3,
    n_folds: int = 5,
    n_classes: int = 2,
    finalists: int | None = None,
) -> list[Round]:
    """The rounds of a search of `n_candidates` on `n_rows` training rows.

    "grid": one round, every candidate on the full folds. "halving": the rounds of scikit-learn's
    HalvingGridSearchCV(resource="n_samples", min_resources="exhaust"), computed the way it
    computes them (so the same rows and candidates are fitted): 1 + floor(log_factor(candidates))
    rounds (fewer when rows run short), round i on min_resources * factor**i rows keeping the best
    ceil(1/factor) of its candidates; except that the last round fits the full folds, and holds at most
    `finalists` candidates where that is set (the best of the round before; None: scikit-learn's count).
    """
    if strategy not in STRATEGIES:
        raise ClassifyError(f"The 'strategy' parameter must be one of {list(STRATEGIES)}. Got {strategy!r} instead.")
    if strategy == "grid" or n_candidates <= 1:
        return [Round(n_candidates, n_rows, n_rows)]
    if factor < 2:
        raise ClassifyError(f"The halving 'factor' must be at least 2. Got {factor} instead.")
    required = 1 + math.floor(math.log(n_candidates, factor))
    min_rows = max(n_folds * 2 * n_classes, n_rows // factor ** (required - 1))
    possible = 1 + math.floor(math.log(max(1, n_rows // min_rows), factor))
    n_rounds = min(required, possible)
    rounds, candidates = [], n_candidates
    for index in range(n_rounds):
        rows = n_rows if index == n_rounds - 1 else min(int(factor**index * min_rows), n_rows)
        rounds.append(Round(candidates, rows, n_rows))
        candidates = math.ceil(candidates / factor)
    if finalists is not None and len(rounds) > 1:
        if finalists < 1:
            raise ClassifyError(f"The halving 'finalists' must be at least 1. Got {finalists} instead.")
        rounds[-1] = Round(min(rounds[-1].candidates, int(finalists)), n_rows, n_rows)
    return rounds


def count_fits(rounds: Sequence[Round], n_folds: int) -> int:
    """Fits a search makes: every candidate of every round on every fold, plus the refit on all rows."""
    return sum(r.candidates for r in rounds) * n_folds + 1


# ---------------------------------------------------------------- fitting candidates


def each_candidate_probabilities(estimator, candidates: Sequence[dict], X_fit, y_fit, X_eval) -> list[np.ndarray]:
    """The default fitter: a clone per candidate fitted on (X_fit, y_fit), and its predict_proba on X_eval."""
    return [clone(estimator).set_params(**params).fit(X_fit, y_fit).predict_proba(X_eval) for params in candidates]


def share_everything(params: dict) -> Hashable:
    """The default grouping: every candidate of a fold in one task."""
    return 0


def thread_limit(threads: int):
    """A context limiting BLAS/OpenMP pools (numpy, scikit-learn) to `threads`."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=max(1, int(threads)))


def with_threads(estimator, threads: int):
    """A clone whose thread parameters (``n_jobs``, ``*__n_jobs`` set to a number: XGBoost's nthread) are `threads`.

    Parameters left at None (LogisticRegression's, OneVsRestClassifier's) are not threads of one fit and stay.
    """
    names = [
        key
        for key, value in estimator.get_params().items()
        if (key == "n_jobs" or key.endswith("__n_jobs")) and value is not None
    ]
    return clone(estimator).set_params(**{key: int(threads) for key in names})


def _run_task(tag, fitter, estimator, candidates, X, y, fit_rows, eval_rows, threads, errors_are_nan):
    """One task: `candidates` fitted on one fold's fit rows; their probabilities on its held-out rows."""
    started = time.perf_counter()
    with thread_limit(threads):
        try:
            probabilities = fitter(with_threads(estimator, threads), candidates, X[fit_rows], y[fit_rows], X[eval_rows])
        except Exception:
            if not errors_are_nan:
                raise
            # an early halving round's subset can lose a class: those candidates rank last, the search goes on
            probabilities = [None] * len(candidates)
    return tag, probabilities, time.perf_counter() - started


def _run_refit(estimator, params, X, y, threads):
    """The refit of the chosen candidate on every row, as a task beside the last round's folds (not when the
    folds cover a subsample: the workers are handed only its rows)."""
    started = time.perf_counter()
    with thread_limit(threads):
        fitted = with_threads(estimator, threads).set_params(**params).fit(X, y)
    return "refit", fitted, time.perf_counter() - started


def _return_as() -> str:
    """Tasks as they finish (the progress bar moves per task) where the active joblib backend can say so;
    in submission order otherwise (joblib's multiprocessing and Ray backends)."""
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    return "generator_unordered" if getattr(backend, "supports_return_generator", False) else "list"


def _auc_or_nan(task: str, y, scores) -> float:
    try:
        return float(evaluate.auc(task, y, scores))
    except ClassifyError:
        return float("nan")


def _top_k(alive: list[int], fold_auc: dict, k: int) -> list[int]:
    """The k best candidates by mean fold AUC, worst first, as scikit-learn's halving orders them
    (NaN - a fold without both classes, or a failed early-round fit - ranks last)."""
    scores = np.array([np.mean(fold_auc[c]) for c in alive])
    order = np.roll(np.argsort(scores), np.count_nonzero(np.isnan(scores)))
    return [alive[i] for i in order[-k:]]


def _best_of(alive: list[int], fold_auc: dict) -> int:
    """The candidate with the highest mean fold AUC (the first of the round when none has one)."""
    scores = np.array([np.mean(fold_auc[c]) for c in alive])
    return alive[0] if np.isnan(scores).all() else alive[int(np.nanargmax(scores))]


# ---------------------------------------------------------------- the search


class FoldSearch(ClassifierMixin, BaseEstimator):
    """Grid or successive-halving search on given folds, scored by AUC; refits the best candidate on all rows.

    Parameters
    ----------
    estimator : scikit-learn classifier
        The unfitted estimator whose parameters the grid sets.
    param_grid : dict[str, list]
        Parameter name -> values; every combination is a candidate (in ParameterGrid's order).
    cv : list of (fit_rows, eval_rows)
        The folds (featx: patient-grouped, from evaluate.grouped_splits).
    task : {"binary", "multiclass", "multilabel"}, default="binary"
        Which AUC scores a candidate, and which probability column is the score.
    strategy : {"grid", "halving"}, default="grid"
        Every candidate on the full folds, or successive halving (see search_rounds).
    factor : int, default=3
        Halving's factor.
    finalists : int or None, default=None
        Halving: at most this many candidates (the previous round's best) in the last round, on the full
        folds (None: scikit-learn's ceil(candidates / factor)).
    candidate_probabilities : callable or None
        ``f(estimator, candidates, X_fit, y_fit, X_eval) -> [predict_proba of X_eval per candidate]``:
        fits several candidates at once (None: each_candidate_probabilities, one clone at a time).
    share_key : callable or None
        ``f(params) -> hashable``: candidates with equal keys are fitted in one task (None: all of a fold).
    n_jobs : int, default=1
        Tasks run in parallel processes.
    threads : int, default=1
        Library threads per task; the refit on all rows uses ``n_jobs * threads``.
    random_state : int, default=0
        Seed of halving's row subsampling.

    Attributes
    ----------
    cv_results_ : dict
        params, mean_test_score, std_test_score, split<k>_test_score, rank_test_score, mean_fit_time,
        iter, n_resources: one entry per candidate and round (as HalvingGridSearchCV).
    best_index_, best_params_, best_score_
        The best candidate of the last round (mean fold AUC).
    best_estimator_
        That candidate refitted on all rows.
    oof_scores_ : ndarray, (n_rows,) or (n_rows, K)
        The best candidate's held-out scores on every row the folds hold out (scoring's probability-column
        rule; zero on rows no fold holds out, when the folds cover a subsample of X's rows).
    oof_rows_ : ndarray
        The rows the folds hold out (every row of X unless the folds were drawn on a subsample).
    refit_time_ : float
    n_candidates_, n_resources_ : list of int, per round
    n_fits_ : int
        Candidates x folds over every round, plus the refit.
    """

    def __init__(
        self,
        estimator,
        param_grid,
        cv,
        task="binary",
        strategy="grid",
        factor=3,
        finalists=None,
        candidate_probabilities=None,
        share_key=None,
        n_jobs=1,
        threads=1,
        random_state=0,
    ):
        self.estimator = estimator
        self.param_grid = param_grid
        self.cv = cv
        self.task = task
        self.strategy = strategy
        self.factor = factor
        self.finalists = finalists
        self.candidate_probabilities = candidate_probabilities
        self.share_key = share_key
        self.n_jobs = n_jobs
        self.threads = threads
        self.random_state = random_state

    # -- what it will do

    def candidates(self) -> list[dict]:
        """Every parameter combination of the grid, in ParameterGrid's order."""
        from sklearn.model_selection import ParameterGrid

        return list(ParameterGrid(self.param_grid))

    def rounds(self, n_rows: int, n_classes: int = 2) -> list[Round]:
        """The rounds a fit on `n_rows` rows of `n_classes` classes will run."""
        return search_rounds(
            self.strategy, len(self.candidates()), n_rows, self.factor, len(self.cv), n_classes, self.finalists
        )

    def planned_fits(self, n_rows: int, n_classes: int = 2) -> int:
        """The fits a fit on `n_rows` rows of `n_classes` label values will make (what `on_fits` counts)."""
        return count_fits(self.rounds(n_rows, n_classes), len(self.cv))

    # -- fitting

    def fit(self, X, y, on_fits: Callable[[int], object] | None = None):
        """Search the grid on the folds, then refit the best candidate on all rows; returns self.

        `on_fits(n)` is called in this process each time n more fits are done: after each task
        (n = its candidates, one fold each), then 1 for the refit.
        """
        from joblib import Parallel, delayed

        X, y = np.asarray(X), np.asarray(y)
        folds = [(np.asarray(fit_rows), np.asarray(eval_rows)) for fit_rows, eval_rows in self.cv]
        candidates = self.candidates()
        # the rows the folds cross-validate: every row, or a subsample of them (stage two's search scheme at
        # scale), while the refit below always fits every row of X
        cv_rows = np.unique(np.concatenate([eval_rows for _, eval_rows in folds])) if folds else np.arange(len(y))
        subsampled = len(cv_rows) < len(y)
        if subsampled:
            # the folds cover a subsample: the fits get those rows only (a worker process is handed a copy of
            # the matrix it reads, here the subsample's instead of every row's); the refit runs here, on every row
            position = np.full(len(y), -1, dtype=np.int64)
            position[cv_rows] = np.arange(len(cv_rows))
            X_cv, y_cv = X[cv_rows], y[cv_rows]
            cv_folds = [(position[fit_rows], position[eval_rows]) for fit_rows, eval_rows in folds]
        else:
            X_cv, y_cv, cv_folds = X, y, folds
        rounds = self.rounds(len(cv_rows), len(np.unique(y_cv)))
        fitter = self.candidate_probabilities or each_candidate_probabilities
        share_key = self.share_key or share_everything
        n_jobs, threads = (-1 if int(self.n_jobs) == -1 else max(1, int(self.n_jobs))), max(1, int(self.threads))

        entries: list[dict] = []  # one per (round, candidate)
        refitted = None  # (estimator, seconds) when the refit ran beside the last round
        alive = list(range(len(candidates)))
        best_scores: list | None = None
        parallel_context = Parallel(n_jobs=n_jobs, return_as=_return_as()) if n_jobs != 1 else nullcontext()
        with parallel_context as parallel:
            for index, round_ in enumerate(rounds):
                last = index == len(rounds) - 1
                alive = alive[: round_.candidates]
                fold_rows = [self._subsample(fold, k, index, round_) for k, fold in enumerate(cv_folds)]
                groups: dict[Hashable, list[int]] = {}
                for c in alive:
                    groups.setdefault(share_key(candidates[c]), []).append(c)
                tasks = [(k, members) for k in range(len(folds)) for members in groups.values()]
                calls = [
                    (
                        (k, members),
                        fitter,
                        self.estimator,
                        [candidates[c] for c in members],
                        X_cv,
                        y_cv,
                        *fold_rows[k],
                        threads,
                        not last,
                    )
                    for k, members in tasks
                ]
                jobs = [delayed(_run_task)(*call) for call in calls]
                if last and len(alive) == 1 and parallel is not None and not subsampled:
                    # the choice is made: the refit runs beside the folds (it would otherwise wait for the
                    # round's last, lone task while the other workers idle), first as the longest task
                    jobs.insert(0, delayed(_run_refit)(self.estimator, candidates[alive[0]], X, y, threads))
                outputs = parallel(jobs) if parallel is not None else (_run_task(*call) for call in calls)
                fold_auc = {c: [np.nan] * len(folds) for c in alive}
                fold_scores: dict[int, list] = {c: [None] * len(folds) for c in alive}
                fit_time = dict.fromkeys(alive, 0.0)
                for tag, probabilities, seconds in outputs:
                    if tag == "refit":
                        refitted = (probabilities, seconds)
                        continue
                    k, members = tag
                    eval_rows = fold_rows[k][1]
                    for c, proba in zip(members, probabilities):
                        fit_time[c] += seconds / len(members)
                        if proba is not None:
                            fold_scores[c][k] = scores_from_probabilities(proba, self.task)
                            fold_auc[c][k] = _auc_or_nan(self.task, y_cv[eval_rows], fold_scores[c][k])
                    if on_fits is not None:
                        on_fits(len(members))
                for c in alive:
                    entries.append(
                        {
                            "candidate": c,
                            "iter": index,
                            "n_resources": round_.rows,
                            "scores": fold_auc[c],
                            "fit_time": fit_time[c] / len(folds),
                        }
                    )
                if last:
                    best = _best_of(alive, fold_auc)
                    best_scores = fold_scores[best]
                else:  # the next round's count: ceil(alive / factor), or fewer finalists
                    alive = _top_k(alive, fold_auc, rounds[index + 1].candidates)
        self._set_results(entries, candidates, len(folds))
        self.best_index_ = next(
            i for i, e in enumerate(entries) if e["iter"] == len(rounds) - 1 and e["candidate"] == best
        )
        self.best_params_ = dict(candidates[best])
        self.best_score_ = float(self.cv_results_["mean_test_score"][self.best_index_])
        if not np.isfinite(self.best_score_):
            raise ClassifyError(
                "No candidate of the grid has an AUC on every fold (a fold's held-out rows hold one class); "
                "lower --cv or check the labels."
            )
        assert best_scores is not None
        self.oof_scores_ = self._out_of_fold(best_scores, folds, len(y))
        self.oof_rows_ = cv_rows

        if refitted is not None:
            self.best_estimator_, self.refit_time_ = refitted
        else:
            started = time.perf_counter()
            refit_threads = threads * max(1, n_jobs)  # the refit runs here, alone: every thread the search had
            with thread_limit(refit_threads):
                refit = with_threads(self.estimator, refit_threads).set_params(**self.best_params_)
                self.best_estimator_ = refit.fit(X, y)
            self.refit_time_ = time.perf_counter() - started
        if on_fits is not None:
            on_fits(1)
        self.n_candidates_ = [r.candidates for r in rounds]
        self.n_resources_ = [r.rows for r in rounds]
        self.n_fits_ = count_fits(rounds, len(folds))
        self.n_splits_ = len(folds)
        return self

    def _subsample(self, fold, k: int, index: int, round_: Round):
        """A fold's rows for one round: all of them in the last round, else the share of each side
        scikit-learn's halving draws (sklearn.utils.resample seeded with random_state, in its order)."""
        from sklearn.utils import resample

        fit_rows, eval_rows = fold
        if round_.rows >= round_.n_rows:
            return fit_rows, eval_rows

        def share(rows):
            n = int(round_.fraction * len(rows))
            return resample(rows, replace=False, random_state=self.random_state, n_samples=n)

        return share(fit_rows), share(eval_rows)

    def _set_results(self, entries: list[dict], candidates: list[dict], n_folds: int) -> None:
        scores = np.array([e["scores"] for e in entries], dtype=float).reshape(len(entries), n_folds)
        means, stds = scores.mean(axis=1), scores.std(axis=1)  # NaN where any fold is NaN
        # rank 1 = best; ties share the lower rank; NaN ranks last (as scikit-learn's searches)
        sortable = np.where(np.isnan(means), -np.inf, means)
        ranks = np.array([1 + int(np.sum(sortable > value)) for value in sortable], dtype=int)
        results: dict = {
            "params": [dict(candidates[e["candidate"]]) for e in entries],
            "mean_test_score": means,
            "std_test_score": stds,
            "rank_test_score": ranks,
            "mean_fit_time": np.array([e["fit_time"] for e in entries]),
            "iter": np.array([e["iter"] for e in entries]),
            "n_resources": np.array([e["n_resources"] for e in entries]),
        }
        for k in range(n_folds):
            results[f"split{k}_test_score"] = scores[:, k]
        self.cv_results_ = results

    def _out_of_fold(self, fold_scores: list, folds, n_rows: int) -> np.ndarray:
        first = np.asarray(fold_scores[0])
        oof = np.zeros((n_rows, *first.shape[1:]), dtype=np.float64)
        for (_, eval_rows), scores in zip(folds, fold_scores):
            oof[eval_rows] = scores
        return oof

    # -- the refitted best candidate

    @property
    def classes_(self):
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.classes_

    def predict_proba(self, X):
        """The refitted best candidate's predict_proba."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict_proba(X)

    def predict(self, X):
        """The refitted best candidate's predict."""
        check_is_fitted(self, "best_estimator_")
        return self.best_estimator_.predict(X)
