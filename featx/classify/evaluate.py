"""Model-selection splits and test statistics: grouped CV, AUC with DeLong CIs, thresholds, clinical metrics.

Everything returned here is plain Python (floats, ints, lists, dicts, None for
an undefined value) so it can go straight into a run's JSON.

Conventions:
- binary scores are P(positive class) with the positive class at index 1;
  a (N, 2) probability matrix is accepted and its second column used;
- multiclass scores are (N, K) probabilities; multilabel y and scores are (N, K);
- a row is called positive when its score is >= the threshold.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from featx.errors import ClassifyError
from featx.jsonvalues import jsonable

TASKS = ("binary", "multiclass", "multilabel")
THRESHOLD_RULES = ("youden", "f1", "sens@<x>", "spec@<x>")


# ---------------------------------------------------------------- tasks and AUC


SUBSAMPLE_SEED_OFFSET = 1_000_003  # patient_subsample's draws differ from the hold-out's of the same seed


def task_of(y) -> str:
    """'binary', 'multiclass' (1-D integer labels) or 'multilabel' ((N, K) 0/1 matrix)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return "multilabel"
    y = y.reshape(-1)
    if y.size == 0:
        raise ClassifyError("The label array is empty; there are no training rows to classify.")
    n_classes = max(len(np.unique(y)), int(y.max()) + 1)
    return "binary" if n_classes <= 2 else "multiclass"


def _check_task(task: str) -> str:
    if task not in TASKS:
        from featx.errors import one_of_message

        raise ClassifyError(one_of_message("task", task, TASKS))
    return task


def _positive_scores(score) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64)
    if score.ndim == 2:
        score = score[:, -1] if score.shape[1] == 2 else score.reshape(-1)
    return score


def _binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC with mid-ranks for ties; nan when y_true holds one class."""
    y_true = np.asarray(y_true).astype(bool)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auc_details(task: str, y_true, score) -> dict:
    """AUC plus which classes/labels were skipped because y_true holds only one value for them.

    Returns {"value", "per_class": [auc or None], "skipped": [index], "note": str | None}.
    binary: ROC AUC of P(positive); multiclass: macro one-vs-rest; multilabel: mean per label.
    """
    _check_task(task)
    y_true = np.asarray(y_true)
    if task == "binary":
        value = _binary_auc(y_true.reshape(-1), _positive_scores(score))
        if math.isnan(value):
            raise ClassifyError("ROC AUC is undefined: the evaluated rows contain only one class.")
        return {"value": value, "per_class": [value], "skipped": [], "note": None}
    score = np.asarray(score, dtype=np.float64)
    if task == "multiclass":
        indicator = y_true.reshape(-1)[:, None] == np.arange(score.shape[1])[None, :]
    else:
        indicator = y_true.astype(bool)
    per_class: list[float | None] = []
    skipped: list[int] = []
    for k in range(score.shape[1]):
        value = _binary_auc(indicator[:, k], score[:, k])
        if math.isnan(value):
            skipped.append(k)
            per_class.append(None)
        else:
            per_class.append(value)
    valid = [v for v in per_class if v is not None]
    if not valid:
        raise ClassifyError("ROC AUC is undefined: every class is either absent from or present in all evaluated rows.")
    note = None
    if skipped:
        kind = "classes" if task == "multiclass" else "labels"
        note = f"{len(skipped)} {kind} {skipped} have a single value in these rows and are left out of the mean AUC"
    return {"value": float(np.mean(valid)), "per_class": per_class, "skipped": skipped, "note": note}


def auc(task: str, y_true, score) -> float:
    """ROC AUC (binary), macro one-vs-rest AUC (multiclass) or mean per-label AUC (multilabel).

    Classes/labels with a single value in y_true are left out of the mean (see auc_details for which).
    """
    return auc_details(task, y_true, score)["value"]


def _stratification_proxy(y: np.ndarray) -> np.ndarray:
    """1-D labels to stratify on: the class, or for multilabel the row's rarest positive label (-1 for none)."""
    if y.ndim == 1:
        return y
    counts = y.sum(axis=0)
    order = np.argsort(counts, kind="stable")  # rarest first
    proxy = np.full(y.shape[0], -1, dtype=np.int64)
    for k in order[::-1]:  # rarest written last so it wins
        proxy[y[:, k].astype(bool)] = k
    return proxy


def _patient_counts(labels: np.ndarray, groups: np.ndarray) -> dict[int, int]:
    return {int(c): len(np.unique(groups[labels == c])) for c in np.unique(labels)}


def grouped_splits(y, groups, n_splits: int, seed: int = 0, classes: Sequence[str] | None = None):
    """Patient-grouped stratified K-fold: a list of (train_rows, test_rows) index arrays.

    No patient ever appears on both sides of a fold. Raises ClassifyError when there are
    fewer patients than folds, or (binary/multiclass) a class has fewer patients than folds.
    Multilabel rows are stratified on their rarest positive label.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y)
    groups = np.asarray(groups)
    if y.shape[0] != groups.shape[0]:
        raise ClassifyError(
            f"There are {y.shape[0]} labels but {groups.shape[0]} patient ids; they must match row for row."
        )
    if n_splits < 2:
        raise ClassifyError(f"The number of CV folds must be at least 2. Got {n_splits} instead.")
    n_patients = len(np.unique(groups))
    if n_patients < n_splits:
        raise ClassifyError(
            f"The training rows hold {n_patients} patients, fewer than the {n_splits} CV folds requested; "
            f"lower --cv to at most {n_patients} or add patients."
        )
    proxy = _stratification_proxy(y)
    if y.ndim == 1:
        for label, count in _patient_counts(proxy, groups).items():
            if count < n_splits:
                name = classes[label] if classes is not None and label < len(classes) else f"class {label}"
                raise ClassifyError(
                    f"Class {name!r} has {count} patients in the training rows, fewer than the {n_splits} CV folds "
                    f"requested; lower --cv to at most {max(count, 1)} or add patients of that class."
                )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [
            (np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64))
            for train, test in splitter.split(np.zeros((len(proxy), 1)), proxy, groups)
        ]


def image_splits(y, n_splits: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Plain stratified K-fold over images, ignoring patients: what a random image-level split does.

    Only for showing how much such a split inflates a score (classify.audit.split_levels); model
    selection always uses grouped_splits. Multilabel rows are stratified on their rarest positive label.
    """
    from sklearn.model_selection import StratifiedKFold

    proxy = _stratification_proxy(np.asarray(y))
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return [
            (np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64))
            for train, test in splitter.split(np.zeros((len(proxy), 1)), proxy)
        ]


def holdout_patients(y, groups, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole patients as a test split: (train_rows, test_rows) row indices.

    The patients are chosen by featx.data.holdout.holdout_patients, the same algorithm `featx manifest scan
    --split-policy patient-holdout` uses, stratified by each patient's largest stratification label (its
    positive, or for multi-label its rarest positive label).
    """
    from featx.data.holdout import holdout_patients as choose_test_patients

    if not 0.0 < test_fraction < 1.0:
        raise ClassifyError(f"The test fraction must lie strictly between 0 and 1. Got {test_fraction} instead.")
    groups = np.asarray(groups).astype(str)
    strata = patient_strata(y, groups)
    if len(strata) < 2:
        raise ClassifyError(
            f"Holding out test patients needs at least 2 patients; the training rows hold {len(strata)}."
        )
    test_patients = choose_test_patients(strata, test_fraction, seed)
    is_test = np.isin(groups, sorted(test_patients))
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def patient_subsample(y, groups, n_rows: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of about `n_rows` rows made of whole patients, stratified like holdout_patients.

    The patients are drawn by the hold-out algorithm (a seeded hash of each patient id, strata guarding the
    edges) with a seed of their own (seed + SUBSAMPLE_SEED_OFFSET), so a cache whose test patients stage
    two held out is subsampled independently of that hold-out.
    """
    y = np.asarray(y)
    if n_rows >= len(y):
        return np.arange(len(y))
    share = min(0.999, max(1e-6, n_rows / len(y)))
    return holdout_patients(y, groups, test_fraction=share, seed=seed + SUBSAMPLE_SEED_OFFSET)[1]


def patient_strata(y, groups) -> dict[str, str]:
    """Each patient id -> its stratum: its largest stratification label (its class; multi-label: rarest positive)."""
    groups = np.asarray(groups).astype(str)
    patients, patient_index = np.unique(groups, return_inverse=True)
    stratum = np.full(len(patients), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(stratum, patient_index, _stratification_proxy(np.asarray(y)).astype(np.int64))
    return dict(zip(patients.tolist(), map(str, stratum.tolist())))


# ---------------------------------------------------------------- DeLong


def _fast_delong(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sun & Xu (2014) fast DeLong: AUCs of k score vectors (k, N) and their (k, k) covariance."""
    y_true = np.asarray(y_true).astype(bool).reshape(-1)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m = int(y_true.sum())
    n = y_true.size - m
    if m == 0 or n == 0:
        raise ClassifyError("ROC AUC is undefined: the evaluated rows contain only one class.")
    positives = scores[:, y_true]
    negatives = scores[:, ~y_true]
    tx = stats.rankdata(positives, axis=1)  # mid-ranks within positives
    ty = stats.rankdata(negatives, axis=1)
    tz = stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n  # structural components of the positives
    v10 = 1.0 - (tz[:, m:] - ty) / m  # ... and of the negatives
    sx = np.atleast_2d(np.cov(v01)) if m > 1 else np.zeros((scores.shape[0],) * 2)
    sy = np.atleast_2d(np.cov(v10)) if n > 1 else np.zeros((scores.shape[0],) * 2)
    return aucs, sx / m + sy / n


def delong_ci(y_true, score, alpha: float = 0.05) -> dict:
    """ROC AUC with DeLong's (1 - alpha) CI: AUC +- z * SE on the AUC scale, clipped to [0, 1].

    Returns {"value", "ci_low", "ci_high", "se", "method": "delong"}.
    """
    aucs, cov = _fast_delong(y_true, _positive_scores(score)[None, :])
    value = float(aucs[0])
    se = float(math.sqrt(max(cov[0, 0], 0.0)))
    z = float(stats.norm.ppf(1.0 - alpha / 2.0))
    return {
        "value": value,
        "ci_low": float(max(0.0, value - z * se)),
        "ci_high": float(min(1.0, value + z * se)),
        "se": se,
        "method": "delong",
    }


def delong_paired_pvalue(y_true, score_a, score_b) -> float:
    """Two-sided p-value of DeLong's test that two correlated AUCs on the same rows are equal."""
    scores = np.vstack([_positive_scores(score_a), _positive_scores(score_b)])
    aucs, cov = _fast_delong(y_true, scores)
    difference = float(aucs[0] - aucs[1])
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if variance <= 1e-15:
        return 1.0 if abs(difference) < 1e-12 else 0.0
    return float(2.0 * stats.norm.sf(abs(difference) / math.sqrt(variance)))


def independent_auc_test(first: dict, second: dict) -> dict:
    """Two-sided z-test that two AUCs from disjoint sets of rows are equal (DeLong SEs, independent samples).

    z = (AUC1 - AUC2) / sqrt(SE1^2 + SE2^2). Returns {"difference", "z", "p_value"} (p 1.0 when both SEs are 0
    and the AUCs agree, 0.0 when they differ).
    """
    difference = float(first["value"]) - float(second["value"])
    variance = float(first["se"]) ** 2 + float(second["se"]) ** 2
    if variance <= 1e-15:
        return {"difference": difference, "z": None, "p_value": 1.0 if abs(difference) < 1e-12 else 0.0}
    z = difference / math.sqrt(variance)
    return {"difference": difference, "z": z, "p_value": float(2.0 * stats.norm.sf(abs(z)))}


# ---------------------------------------------------------------- bootstrap


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true,
    score,
    n_boot: int = 1000,
    seed: int = 0,
    groups=None,
    alpha: float = 0.05,
) -> dict:
    """Percentile bootstrap CI of metric(y_true, score); resamples whole patients when groups are given.

    Resamples on which the metric is undefined (ValueError/ClassifyError or nan) are dropped and counted.
    Returns {"value", "ci_low", "ci_high", "se", "method": "bootstrap", "n_boot", "n_invalid"}.
    """
    y_true = np.asarray(y_true)
    score = np.asarray(score)
    rng = np.random.default_rng(seed)
    if groups is not None:
        groups = np.asarray(groups)
        _, patient_index = np.unique(groups, return_inverse=True)
        order = np.argsort(patient_index, kind="stable")
        bounds = np.searchsorted(patient_index[order], np.arange(patient_index.max() + 2))
        rows_of = [order[bounds[p] : bounds[p + 1]] for p in range(len(bounds) - 1)]
        n_units = len(rows_of)
    else:
        n_units = y_true.shape[0]
    value = float(metric(y_true, score))
    samples = []
    n_invalid = 0
    for _ in range(n_boot):
        picks = rng.integers(0, n_units, size=n_units)
        rows = np.concatenate([rows_of[p] for p in picks]) if groups is not None else picks
        try:
            sample = float(metric(y_true[rows], score[rows]))
        except (ValueError, ClassifyError):
            sample = float("nan")
        if math.isnan(sample):
            n_invalid += 1
        else:
            samples.append(sample)
    if not samples:
        raise ClassifyError(
            "No bootstrap resample had a defined metric; the evaluated rows are too few or hold one class."
        )
    samples_array = np.asarray(samples)
    return {
        "value": value,
        "ci_low": float(np.quantile(samples_array, alpha / 2.0)),
        "ci_high": float(np.quantile(samples_array, 1.0 - alpha / 2.0)),
        "se": float(samples_array.std(ddof=1)) if len(samples) > 1 else 0.0,
        "method": "bootstrap",
        "n_boot": int(n_boot),
        "n_invalid": int(n_invalid),
    }


# ---------------------------------------------------------------- threshold


_RULE = re.compile(r"^(sens|spec)@(0?\.\d+|1(?:\.0*)?)$")


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """('youden', None), ('f1', None), ('sens', 0.95) or ('spec', 0.9); ClassifyError otherwise."""
    text = str(rule).strip().lower()
    if text in ("youden", "f1"):
        return text, None
    match = _RULE.match(text)
    if match and 0.0 < float(match.group(2)) <= 1.0:
        return match.group(1), float(match.group(2))
    raise ClassifyError(
        f"The 'threshold_rule' parameter must be one of ['youden', 'f1', 'sens@X', 'spec@X'] with X in (0, 1], "
        f"e.g. 'sens@0.95'. Got {rule!r} instead."
    )


def _rates_at(y_true: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = score >= threshold
    positives = y_true.astype(bool)
    sensitivity = float(predicted[positives].mean()) if positives.any() else float("nan")
    specificity = float((~predicted[~positives]).mean()) if (~positives).any() else float("nan")
    return sensitivity, specificity


def choose_threshold(y_true, score, rule: str = "youden") -> dict:
    """Decision threshold on out-of-fold P(positive) for a binary task (positive when score >= value).

    youden: maximises sensitivity + specificity - 1; f1: maximises F1;
    sens@X: the highest threshold whose sensitivity reaches X; spec@X: the lowest whose specificity reaches X.
    Returns {"rule", "value", "oof_sensitivity", "oof_specificity"}.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    kind, target = parse_threshold_rule(rule)
    y_true = np.asarray(y_true).reshape(-1).astype(int)
    score = _positive_scores(score)
    if len(np.unique(y_true)) < 2:
        raise ClassifyError("A threshold cannot be chosen: the out-of-fold rows contain only one class.")
    if kind == "f1":
        precision, recall, thresholds = precision_recall_curve(y_true, score)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
        value = float(thresholds[int(np.argmax(f1))])
    else:
        fpr, tpr, thresholds = roc_curve(y_true, score, drop_intermediate=False)
        if kind == "youden":
            index = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
        elif kind == "sens":
            assert target is not None  # parse_threshold_rule gives sens@X and spec@X a target
            index = int(np.flatnonzero(tpr >= target - 1e-12)[0])
        else:
            assert target is not None
            index = int(np.flatnonzero(1.0 - fpr >= target - 1e-12)[-1])
        value = float(thresholds[index])
    if not math.isfinite(value):  # roc_curve's first threshold (inf) = call nothing positive
        value = float(np.nextafter(score.max(), np.inf))
    sensitivity, specificity = _rates_at(y_true, score, value)
    return {"rule": str(rule), "value": value, "oof_sensitivity": sensitivity, "oof_specificity": specificity}


# ---------------------------------------------------------------- test metrics


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _binary_counts(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    y_true = y_true.astype(bool)
    y_pred = y_pred.astype(bool)
    tp = int((y_true & y_pred).sum())
    tn = int((~y_true & ~y_pred).sum())
    fp = int((~y_true & y_pred).sum())
    fn = int((y_true & ~y_pred).sum())
    return {
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def _macro(per_class: list[dict], key: str) -> float | None:
    values = [entry[key] for entry in per_class if entry[key] is not None]
    return float(np.mean(values)) if values else None


def _per_class_auc(indicator: np.ndarray, score: np.ndarray, classes: Sequence[str]) -> dict:
    result = {}
    for k, name in enumerate(classes):
        column = indicator[:, k]
        if column.all() or not column.any():
            result[str(name)] = {
                "value": None,
                "ci_low": None,
                "ci_high": None,
                "se": None,
                "method": "delong",
                "note": "single value in the test rows",
            }
        else:
            result[str(name)] = delong_ci(column, score[:, k])
    return result


def _threshold_value(threshold) -> float:
    if threshold is None:
        return 0.5
    if isinstance(threshold, dict):
        return float(threshold["value"])
    return float(threshold)


def evaluate_test(task: str, y_true, score, classes: Sequence[str], threshold=None) -> dict:
    """Every test metric of a run: the "test" section of the run JSON (docs/internals.md).

    Parameters
    ----------
    task : {"binary", "multiclass", "multilabel"}
    y_true : array-like
        (N,) class indices, or (N, K) 0/1 for multilabel.
    score : array-like
        P(positive) (N,) for binary, (N, K) otherwise (featx.classify.scoring.predict_scores).
    classes : sequence of str
    threshold : float, dict, sequence or None
        binary: the OOF-chosen value (float or choose_threshold's dict; None = 0.5); multiclass: ignored
        (predictions are the argmax); multilabel: None (0.5 for every label), one float, or one per label.

    Returns
    -------
    dict
        Plain JSON values; undefined ratios (e.g. PPV with no positive call) are None.
    """
    _check_task(task)
    classes = [str(c) for c in classes]
    y_true = np.asarray(y_true)
    score = np.asarray(score, dtype=np.float64)
    if int(y_true.shape[0]) == 0:
        raise ClassifyError("There are no test rows to evaluate.")
    metrics = {"binary": _binary_metrics, "multiclass": _multiclass_metrics, "multilabel": _multilabel_metrics}[task]
    return jsonable(metrics(y_true, score, classes, threshold))


def _binary_metrics(y_true: np.ndarray, score: np.ndarray, classes: list[str], threshold) -> dict:
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        classification_report,
        confusion_matrix,
    )

    y = y_true.reshape(-1).astype(int)
    p = _positive_scores(score)
    value = _threshold_value(threshold)
    y_pred = (p >= value).astype(int)
    counts = _binary_counts(y, y_pred)
    return {
        "n": int(y.shape[0]),
        "n_positive": int(y.sum()),
        "threshold": value,
        "auc": delong_ci(y, p),
        "pr_auc": float(average_precision_score(y, p)) if y.any() else None,
        "accuracy": counts["accuracy"],
        "balanced_accuracy": float(balanced_accuracy_score(y, y_pred)),
        "sensitivity": counts["sensitivity"],
        "specificity": counts["specificity"],
        "ppv": counts["ppv"],
        "npv": counts["npv"],
        "f1": counts["f1"],
        "brier": float(np.mean((p - y) ** 2)) if p.min() >= 0.0 and p.max() <= 1.0 else None,
        "confusion_matrix": confusion_matrix(y, y_pred, labels=[0, 1]).tolist(),
        "classification_report": classification_report(
            y, y_pred, labels=[0, 1], target_names=classes[:2], output_dict=True, zero_division=0
        ),
    }


def _mean_pr_auc(indicator: np.ndarray, score: np.ndarray) -> float | None:
    """Mean average precision over the classes/labels that have both values in the rows."""
    from sklearn.metrics import average_precision_score

    n = indicator.shape[0]
    present = [k for k in range(indicator.shape[1]) if 0 < indicator[:, k].sum() < n]
    if not present:
        return None
    return float(np.mean([average_precision_score(indicator[:, k], score[:, k]) for k in present]))


def _multiclass_metrics(y_true: np.ndarray, score: np.ndarray, classes: list[str], threshold) -> dict:
    from sklearn.metrics import balanced_accuracy_score, classification_report, confusion_matrix

    n_classes = score.shape[1]
    y = y_true.reshape(-1).astype(int)
    indicator = (y[:, None] == np.arange(n_classes)[None, :]).astype(int)
    y_pred = score.argmax(axis=1)
    per_class = [_binary_counts(indicator[:, k], y_pred == k) for k in range(n_classes)]
    result = {
        "n": int(y.shape[0]),
        "threshold": None,
        "prediction_rule": "argmax",
        "auc": bootstrap_ci(lambda a, b: auc("multiclass", a, b), y, score),
        "per_class_auc": _per_class_auc(indicator, score, classes),
        "pr_auc": _mean_pr_auc(indicator, score),
        "accuracy": float((y_pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, y_pred)),
        "sensitivity": _macro(per_class, "sensitivity"),
        "specificity": _macro(per_class, "specificity"),
        "ppv": _macro(per_class, "ppv"),
        "npv": _macro(per_class, "npv"),
        "f1": _macro(per_class, "f1"),
        "brier": float(np.mean(np.sum((score - indicator) ** 2, axis=1))),
        "confusion_matrix": confusion_matrix(y, y_pred, labels=list(range(n_classes))).tolist(),
        "classification_report": classification_report(
            y, y_pred, labels=list(range(n_classes)), target_names=classes, output_dict=True, zero_division=0
        ),
        "averaging": "macro over classes (one-vs-rest)",
    }
    note = auc_details("multiclass", y, score)["note"]
    if note:
        result["auc_note"] = note
    return result


def _label_thresholds(threshold, n_labels: int) -> np.ndarray:
    if threshold is None or isinstance(threshold, (int, float, dict)):
        return np.full(n_labels, _threshold_value(threshold))
    thresholds = np.asarray(threshold, dtype=np.float64).reshape(-1)
    if thresholds.size != n_labels:
        raise ClassifyError(f"There are {n_labels} labels but {thresholds.size} thresholds; pass one per label.")
    return thresholds


def _multilabel_metrics(y_true: np.ndarray, score: np.ndarray, classes: list[str], threshold) -> dict:
    from sklearn.metrics import classification_report, multilabel_confusion_matrix

    indicator = y_true.astype(int)
    thresholds = _label_thresholds(threshold, score.shape[1])
    y_pred = (score >= thresholds[None, :]).astype(int)
    per_label = [_binary_counts(indicator[:, k], y_pred[:, k]) for k in range(score.shape[1])]
    balanced = [
        {
            "ba": None
            if c["sensitivity"] is None or c["specificity"] is None
            else (c["sensitivity"] + c["specificity"]) / 2
        }
        for c in per_label
    ]
    result = {
        "n": int(indicator.shape[0]),
        "threshold": thresholds.tolist(),
        "prediction_rule": "per-label threshold",
        "auc": bootstrap_ci(lambda a, b: auc("multilabel", a, b), indicator, score),
        "per_class_auc": _per_class_auc(indicator, score, classes),
        "pr_auc": _mean_pr_auc(indicator, score),
        "accuracy": float((y_pred == indicator).mean()),
        "subset_accuracy": float((y_pred == indicator).all(axis=1).mean()),
        "balanced_accuracy": _macro(balanced, "ba"),
        "sensitivity": _macro(per_label, "sensitivity"),
        "specificity": _macro(per_label, "specificity"),
        "ppv": _macro(per_label, "ppv"),
        "npv": _macro(per_label, "npv"),
        "f1": _macro(per_label, "f1"),
        "brier": float(np.mean((score - indicator) ** 2)),
        "confusion_matrix": multilabel_confusion_matrix(indicator, y_pred).tolist(),
        "classification_report": classification_report(
            indicator, y_pred, target_names=classes, output_dict=True, zero_division=0
        ),
        "averaging": "macro over labels; confusion_matrix is one [[tn, fp], [fn, tp]] per label",
    }
    note = auc_details("multilabel", indicator, score)["note"]
    if note:
        result["auc_note"] = note
    return result
