"""Data-efficiency curves: a run's chosen configuration re-fitted on fewer training patients.

No new search: the estimator that grouped CV chose (the run's best_params) is cloned and
fitted on a stratified sample of whole training patients, for each fraction and seed, and
scored on the run's own test rows. The samples of one seed are nested (the 1% sample lies
inside the 10% one), so along a seed's curve only the added patients change. Fraction 1.0 is
the run itself: its refit on every training row and its test AUC, not a second fit.

Stage two never touches an image, so a curve costs only these fits; its seconds are recorded.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from joblib import Parallel, delayed

from featx.classify import evaluate
from featx.classify.scoring import predict_scores
from featx.errors import ClassifyError, short_reason

DEFAULT_SEEDS = 3


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """The fractions sorted and unique; ClassifyError unless each lies in (0, 1]."""
    checked = []
    for value in fractions:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 0.0 < number <= 1.0:
            raise ClassifyError(
                f"Each --train-fraction must be a number in (0, 1], e.g. 0.01,0.1,0.3,1.0. Got {value!r} instead."
            )
        checked.append(number)
    return tuple(sorted(set(checked)))


def check_seeds(seeds) -> int:
    """The number of subsamples per fraction; ClassifyError unless it is a positive integer."""
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise ClassifyError(f"--efficiency-seeds must be a positive integer. Got {seeds!r} instead.")
    return int(seeds)


def subsample_patients(y, groups, fraction: float, seed: int) -> np.ndarray:
    """Row indices of a stratified sample of whole patients: round(fraction * n) of each stratum, at least one.

    A patient's stratum is its class (multi-label: its rarest positive label), as in the hold-out,
    so every class keeps at least one patient. One seed draws one order of each stratum's patients,
    and a fraction takes the front of that order: samples of one seed are nested.
    """
    groups = np.asarray(groups).astype(str)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for patient, stratum in evaluate.patient_strata(y, groups).items():  # patients in sorted order
        by_stratum[stratum].append(patient)
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for stratum in sorted(by_stratum):
        patients = by_stratum[stratum]
        order = rng.permutation(len(patients))
        keep = min(len(patients), max(1, round(fraction * len(patients))))
        chosen.extend(patients[i] for i in order[:keep])
    return np.flatnonzero(np.isin(groups, chosen))


def _fit_and_score(estimator, task, X_train, y_train, rows, X_test, y_test) -> tuple[float | None, str | None]:
    """Test AUC of `estimator` fitted on `rows` of the training data; (None, reason) when the fit or AUC fails."""
    try:
        estimator.fit(X_train[rows], y_train[rows])
        return evaluate.auc(task, y_test, predict_scores(estimator, X_test, task)), None
    except (ValueError, ClassifyError) as error:  # a subsample too small for this estimator, or an undefined AUC
        return None, short_reason(error)


def _summary(values: list[float | None]) -> dict:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"auc_mean": None, "auc_std": None, "auc_min": None, "auc_max": None}
    return {
        "auc_mean": float(np.mean(finite)),
        "auc_std": float(np.std(finite)),
        "auc_min": float(np.min(finite)),
        "auc_max": float(np.max(finite)),
    }


def efficiency_curve(
    estimator,
    task: str,
    X_train,
    y_train,
    groups,
    X_test,
    y_test,
    fractions: Sequence[float],
    seeds: int,
    seed: int = 0,
    run_auc: float | None = None,
    n_jobs: int = 1,
) -> dict:
    """Test AUC against training patients for one run: the `efficiency` section of its run JSON.

    Parameters
    ----------
    estimator : the run's fitted best estimator; only its parameters are used (cloned per fit).
    X_train, y_train, groups : the run's training rows and their patient ids.
    X_test, y_test : the run's test rows.
    fractions : shares of the training patients, each in (0, 1]; 1.0 is the run itself (`run_auc`).
    seeds : subsamples per fraction below 1.0, drawn with seeds seed, seed + 1, ...

    Returns
    -------
    dict
        {fractions, seeds, subsample_seeds, n_train_patients, n_train_images, points, n_fits, seconds};
        each point {fraction, from_run, n_patients [per seed], n_images [per seed], auc [per seed],
        errors [per seed], auc_mean, auc_std, auc_min, auc_max, n_patients_mean}.
    """
    from sklearn.base import clone

    started = time.perf_counter()
    fractions = check_fractions(fractions)
    seeds = check_seeds(seeds)
    groups = np.asarray(groups).astype(str)
    y_train = np.asarray(y_train)
    subsample_seeds = [int(seed) + k for k in range(seeds)]
    jobs = [
        (fraction, sample_seed, subsample_patients(y_train, groups, fraction, sample_seed))
        for fraction in fractions
        if fraction < 1.0
        for sample_seed in subsample_seeds
    ]
    results = Parallel(n_jobs=n_jobs)(
        delayed(_fit_and_score)(clone(estimator), task, X_train, y_train, rows, X_test, y_test) for _, _, rows in jobs
    )
    points = []
    for fraction in fractions:
        if fraction >= 1.0:
            n_patients, n_images, aucs, errors = [len(np.unique(groups))], [len(groups)], [run_auc], [None]
        else:
            mine = [(rows, result) for (f, _, rows), result in zip(jobs, results) if f == fraction]
            n_patients = [len(np.unique(groups[rows])) for rows, _ in mine]
            n_images = [len(rows) for rows, _ in mine]
            aucs = [result[0] for _, result in mine]
            errors = [result[1] for _, result in mine]
        points.append(
            {
                "fraction": fraction,
                "from_run": fraction >= 1.0,
                "n_patients": n_patients,
                "n_images": n_images,
                "auc": aucs,
                "errors": errors,
                **_summary(aucs),
                "n_patients_mean": float(np.mean(n_patients)),
            }
        )
    return {
        "fractions": list(fractions),
        "seeds": seeds,
        "subsample_seeds": subsample_seeds,
        "stratified_by": "patient class",
        "n_train_patients": len(np.unique(groups)),
        "n_train_images": len(groups),
        "points": points,
        "n_fits": len(jobs),
        "seconds": time.perf_counter() - started,
    }
