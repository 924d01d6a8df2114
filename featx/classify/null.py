"""The label-permutation null: is a run's test AUC distinguishable from chance?

`featx classify --null-permutations K` refits each run's chosen configuration (its best
parameters; no new search) K times on its training rows with the labels permuted between
patients - every image of a patient takes the label of another patient, so a patient's images
stay together and never get two labels by chance - and scores each refit on the real test rows.
Those K AUCs are the null distribution: what this pipeline reaches on these images when the
labels carry no information. The permutation p-value of the real test AUC is
(1 + #{null AUC >= real AUC}) / (K + 1), which cannot fall below 1 / (K + 1); with fewer than
MIN_EXACT - 1 permutations the run is also judged on a normal approximation of the null
(z = (real - mean) / sd, one-sided), and the record says which rule decided.

Refitting only the chosen configuration makes the null cheaper than a search per permutation
and slightly optimistic about chance (the real labels chose the parameters); the report says so.
"""

from __future__ import annotations

import math
import time

import numpy as np
from joblib import Parallel, delayed
from scipy import stats

from featx.classify import evaluate
from featx.classify.scoring import predict_scores
from featx.errors import ClassifyError, short_reason

ALPHA = 0.05
MIN_EXACT = 20  # with K >= MIN_EXACT - 1 permutations the exact p-value alone can reach ALPHA
SCHEME = (
    "labels permuted between patients (each patient's images take another patient's label); the run's chosen "
    "configuration refitted on the training rows and scored on the real test rows"
)


def check_permutations(k) -> int:
    """K, a non-negative integer; ClassifyError otherwise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ClassifyError(f"--null-permutations must be a whole number of refits, 0 or more. Got {k!r} instead.")
    return int(k)


def permuted_labels(y, groups, rng: np.random.Generator) -> np.ndarray:
    """y with whole patients' labels permuted: each patient's rows all take the label (first row's) of one other
    patient, drawn by a permutation of the patients, so the patient-level class counts stay as they are."""
    y = np.asarray(y)
    groups = np.asarray(groups).astype(str)
    patients, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    patient_labels = y[first]
    order = rng.permutation(len(patients))
    return patient_labels[order][inverse]


def _fit_and_score(estimator, task, X_train, y_perm, X_test, y_test):
    try:
        estimator.fit(X_train, y_perm)
        return evaluate.auc(task, y_test, predict_scores(estimator, X_test, task)), None
    except (ValueError, ClassifyError) as error:
        return None, short_reason(error)


def summarize(null_aucs, real_auc: float | None, alpha: float = ALPHA) -> dict:
    """The null's summary: mean, sd, 95th percentile, permutation p-value, normal-approximation p, verdict."""
    finite = np.array([a for a in null_aucs if a is not None and math.isfinite(a)], dtype=float)
    k = len(finite)
    out: dict = {
        "n_valid": int(k),
        "mean": None,
        "sd": None,
        "q95": None,
        "max": None,
        "p_value": None,
        "p_min": (1.0 / (k + 1)) if k else None,
        "z": None,
        "p_normal": None,
        "distinguishable": None,
        "decided_by": None,
        "alpha": alpha,
    }
    if not k:
        return out
    out.update(
        mean=float(finite.mean()),
        sd=float(finite.std(ddof=1)) if k > 1 else 0.0,
        q95=float(np.quantile(finite, 0.95)),
        max=float(finite.max()),
    )
    if real_auc is None or not math.isfinite(real_auc):
        return out
    out["p_value"] = float((1 + np.sum(finite >= real_auc)) / (k + 1))
    if out["sd"]:
        out["z"] = float((real_auc - out["mean"]) / out["sd"])
        out["p_normal"] = float(stats.norm.sf(out["z"]))
    if k >= MIN_EXACT - 1:
        out["distinguishable"] = bool(out["p_value"] < alpha)
        out["decided_by"] = "permutation p-value"
    else:
        normal = out["p_normal"] if out["p_normal"] is not None else (0.0 if real_auc > out["max"] else 1.0)
        out["distinguishable"] = bool(normal < alpha and real_auc > out["max"])
        out["decided_by"] = (
            f"normal approximation of the null and above every null AUC (fewer than {MIN_EXACT - 1} permutations: "
            f"the permutation p-value cannot reach {alpha})"
        )
    return out


def permutation_null(
    search,
    task: str,
    X_train,
    y_train,
    groups,
    X_test,
    y_test,
    permutations: int,
    seed: int = 0,
    real_auc: float | None = None,
) -> dict:
    """The run record's "null": K refits of the chosen configuration on patient-permuted labels.

    Returns {permutations, seed, scheme, aucs [per permutation], errors, real_auc, n_fits, seconds,
    + summarize(...)}. Refits run with the search's CPU split (its parallel fits, its threads each).
    """
    from sklearn.base import clone

    from featx.classify.search import with_threads

    started = time.perf_counter()
    permutations = check_permutations(permutations)
    base = with_threads(search.best_estimator_, search.threads)
    rng = np.random.default_rng([int(seed), 17])
    labels = [permuted_labels(y_train, groups, rng) for _ in range(permutations)]
    results = Parallel(n_jobs=search.n_jobs)(
        delayed(_fit_and_score)(clone(base), task, X_train, y_perm, X_test, y_test) for y_perm in labels
    )
    aucs = [result[0] for result in results]
    return {
        "permutations": permutations,
        "seed": int(seed),
        "scheme": SCHEME,
        "aucs": aucs,
        "errors": [result[1] for result in results],
        "real_auc": real_auc,
        **summarize(aucs, real_auc),
        "n_fits": permutations,
        "seconds": time.perf_counter() - started,
    }
