"""The scores stage two and predict share: which probability column is "the" score, and the AUC scorer of the search."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featx.classify import evaluate
from featx.errors import ClassifyError


def task_for(y: np.ndarray, classes: Sequence[str]) -> str:
    """binary | multiclass | multilabel, from the label array's shape and the class list."""
    if np.asarray(y).ndim == 2:
        return "multilabel"
    return "binary" if len(classes) == 2 else "multiclass"


def predict_scores(estimator, X: np.ndarray, task: str) -> np.ndarray:
    """The scores every metric uses: P(positive) (N,) for binary, (N, K) otherwise.

    Multi-label estimators may return a list of per-label (N, 2) arrays (the
    scikit-learn convention for multi-output); that becomes the (N, K) matrix of
    P(label present).
    """
    return scores_from_probabilities(estimator.predict_proba(X), task)


def scores_from_probabilities(proba, task: str) -> np.ndarray:
    """predict_scores' rule applied to a predict_proba output (the search scores held-out rows with it)."""
    if isinstance(proba, list):
        proba = np.column_stack([p[:, -1] for p in proba])
    proba = np.asarray(proba, dtype=np.float64)
    if task == "binary":
        return proba[:, 1] if proba.ndim == 2 else proba
    return proba


class AUCScorer:
    """GridSearchCV scoring: ROC AUC / macro one-vs-rest AUC / mean per-label AUC.

    An undefined AUC (the scored rows hold one class) is NaN rather than an error:
    successive halving scores early rounds on small random subsets of each fold,
    where that can happen; scikit-learn ranks NaN candidates last, and the final
    round, which picks the model, always scores the full folds.
    """

    def __init__(self, task: str):
        self.task = task

    def __call__(self, estimator, X, y) -> float:
        scores = predict_scores(estimator, X, self.task)
        try:
            return float(evaluate.auc(self.task, y, scores))
        except ClassifyError:
            return float("nan")


def class_probabilities(estimator, X: np.ndarray, task: str) -> np.ndarray:
    """(N, K) per-class probabilities in class order; binary is [1 - P(positive), P(positive)] from predict_scores."""
    scores = predict_scores(estimator, X, task)
    if task == "binary":
        return np.column_stack([1.0 - scores, scores])
    return scores
