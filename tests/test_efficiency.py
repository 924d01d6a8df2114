"""Data-efficiency curves: stratified whole-patient subsamples, the run's own configuration, no new search."""

from __future__ import annotations

import numpy as np
import pytest
from cachefactory import signal_dataset
from sklearn.linear_model import LogisticRegression

from featx.classify import efficiency
from featx.errors import ClassifyError


def _patients(n_normal=40, n_pneumonia=60, seed=0):
    rng = np.random.default_rng(seed)
    groups, y = [], []
    for p in range(n_normal + n_pneumonia):
        label = int(p >= n_normal)
        for _ in range(int(rng.integers(1, 4))):
            groups.append(f"P{p:03d}")
            y.append(label)
    return np.asarray(y), np.asarray(groups)


def test_subsamples_take_whole_patients_stratified_and_nested():
    y, groups = _patients()
    previous: set[str] = set()
    for fraction in (0.05, 0.1, 0.3, 0.5):
        rows = efficiency.subsample_patients(y, groups, fraction, seed=4)
        chosen = set(groups[rows])
        assert np.array_equal(rows, np.flatnonzero(np.isin(groups, sorted(chosen))))  # every image of a chosen patient
        per_class = {label: len({g for g in chosen if y[groups == g][0] == label}) for label in (0, 1)}
        assert per_class == {0: max(1, round(fraction * 40)), 1: max(1, round(fraction * 60))}
        assert previous <= chosen  # one seed's samples are nested
        previous = chosen
    other = set(groups[efficiency.subsample_patients(y, groups, 0.3, seed=5)])
    assert other != set(groups[efficiency.subsample_patients(y, groups, 0.3, seed=4)])


def test_a_tiny_fraction_keeps_one_patient_of_each_class():
    y, groups = _patients(n_normal=10, n_pneumonia=30)
    rows = efficiency.subsample_patients(y, groups, 0.001, seed=0)
    assert sorted(set(y[rows])) == [0, 1] and len(set(groups[rows])) == 2


def test_the_curve_refits_the_given_configuration_on_each_subsample():
    data = signal_dataset(n_train_patients=80, n_test=60, dim=8, separation=2.0, seed=3)
    X, y, split, groups = data["X"], data["y"], np.asarray(data["split"]), np.asarray(data["patient_id"])
    train, test = split == "train", split == "test"
    chosen = LogisticRegression(C=0.05).fit(X[train], y[train])
    curve = efficiency.efficiency_curve(
        chosen, "binary", X[train], y[train], groups[train], X[test], y[test], (1.0, 0.1, 0.5), 3, seed=7, run_auc=0.9
    )
    assert curve["fractions"] == [0.1, 0.5, 1.0] and curve["subsample_seeds"] == [7, 8, 9]
    assert curve["n_fits"] == 6 and curve["seconds"] >= 0
    small, half, full = curve["points"]
    assert full["from_run"] and full["auc"] == [0.9] and full["n_patients"] == [80]
    assert half["n_patients"] == [40] * 3 and small["n_patients"] == [8] * 3
    assert all(0.5 < auc <= 1.0 for auc in small["auc"] + half["auc"])
    assert small["auc_min"] <= small["auc_mean"] <= small["auc_max"]
    # each point is the configuration refitted on that subsample, scored on the test rows
    rows = efficiency.subsample_patients(y[train], groups[train], 0.5, 8)
    expected = LogisticRegression(C=0.05).fit(X[train][rows], y[train][rows]).predict_proba(X[test])[:, 1]
    from sklearn.metrics import roc_auc_score

    assert half["auc"][1] == pytest.approx(roc_auc_score(y[test], expected))
    assert chosen.coef_.shape == (1, 8)  # the run's own estimator is left as it was (clones are fitted)


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "many", "nan"])
def test_fractions_outside_zero_to_one_are_refused(value):
    with pytest.raises(ClassifyError, match=r"--train-fraction must be a number in \(0, 1\]"):
        efficiency.check_fractions([value])
    with pytest.raises(ClassifyError, match="--efficiency-seeds must be a positive integer"):
        efficiency.check_seeds(0)
