"""evaluate.py: AUCs, grouped splits, DeLong, bootstrap, thresholds and test metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from featx.classify import evaluate
from featx.errors import ClassifyError


def _scores(n=300, shift=0.8, seed=0, rounding=1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.round(y * shift + rng.normal(size=n), rounding)  # rounding makes ties
    return y, score


def _naive_delong(y, score):
    """DeLong (1988) from its definition: O(m*n) placement values, a reference for the fast version."""
    pos, neg = score[y == 1], score[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    return auc, np.sqrt(var)


# ---------------------------------------------------------------- task and AUC


def test_task_of_tells_binary_multiclass_and_multilabel():
    assert evaluate.task_of([0, 1, 1, 0]) == "binary"
    assert evaluate.task_of([0, 0, 0]) == "binary"
    assert evaluate.task_of([0, 2, 1, 1]) == "multiclass"
    assert evaluate.task_of(np.array([[0, 1, 1], [1, 0, 0]])) == "multilabel"


def test_auc_matches_scikit_learn_for_each_task():
    rng = np.random.default_rng(1)
    y, score = _scores()
    assert evaluate.auc("binary", y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    proba2 = np.column_stack([1 - score, score])
    assert evaluate.auc("binary", y, proba2) == pytest.approx(roc_auc_score(y, score), abs=1e-12)

    ym = rng.integers(0, 3, 200)
    pm = rng.dirichlet([1, 1, 1], 200)
    pm[np.arange(200), ym] += 0.3
    pm /= pm.sum(axis=1, keepdims=True)
    expected = roc_auc_score(ym, pm, multi_class="ovr", average="macro")
    assert evaluate.auc("multiclass", ym, pm) == pytest.approx(expected, abs=1e-12)

    yl = rng.integers(0, 2, (200, 4))
    pl = rng.random((200, 4)) + 0.5 * yl
    assert evaluate.auc("multilabel", yl, pl) == pytest.approx(roc_auc_score(yl, pl, average="macro"), abs=1e-12)


def test_multilabel_auc_skips_single_valued_labels_and_says_so():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (100, 3))
    y[:, 1] = 0
    score = rng.random((100, 3)) + 0.5 * y
    details = evaluate.auc_details("multilabel", y, score)
    assert details["skipped"] == [1]
    assert "1 labels [1]" in details["note"]
    expected = np.mean([roc_auc_score(y[:, k], score[:, k]) for k in (0, 2)])
    assert details["value"] == pytest.approx(expected)
    assert details["per_class"][1] is None


def test_binary_auc_on_one_class_is_a_clear_error():
    with pytest.raises(ClassifyError, match="only one class"):
        evaluate.auc("binary", [1, 1, 1], [0.2, 0.4, 0.9])


# ---------------------------------------------------------------- splits


@settings(max_examples=60, deadline=None)
@given(
    n_patients=st.integers(min_value=5, max_value=40),
    rows_per_patient=st.integers(min_value=1, max_value=5),
    n_splits=st.integers(min_value=2, max_value=5),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_grouped_splits_never_split_a_patient(n_patients, rows_per_patient, n_splits, seed):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i}" for i in range(n_patients)], rng.integers(1, rows_per_patient + 1, n_patients))
    patient_label = np.arange(n_patients) % 2  # both classes have >= 2 patients
    index = {p: i for i, p in enumerate(dict.fromkeys(groups))}
    y = np.array([patient_label[index[g]] for g in groups])
    if min(np.bincount(patient_label)) < n_splits:
        with pytest.raises(ClassifyError, match="--cv"):
            evaluate.grouped_splits(y, groups, n_splits, seed)
        return
    splits = evaluate.grouped_splits(y, groups, n_splits, seed)
    assert len(splits) == n_splits
    seen_in_test = np.zeros(len(y), dtype=int)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == len(y)
        seen_in_test[test] += 1
    assert (seen_in_test == 1).all()


def test_grouped_splits_multilabel_keeps_patients_whole():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(60), 3)
    y = np.repeat(rng.integers(0, 2, (60, 4)), 3, axis=0)
    for train, test in evaluate.grouped_splits(y, groups, 5, seed=0):
        assert not set(groups[train]) & set(groups[test])


def test_grouped_splits_depend_on_the_seed_only():
    y = np.arange(100) % 2
    groups = np.arange(100) // 2 * 2 + y  # 2 rows per patient, one class per patient
    a = evaluate.grouped_splits(y, groups, 4, seed=7)
    b = evaluate.grouped_splits(y, groups, 4, seed=7)
    c = evaluate.grouped_splits(y, groups, 4, seed=8)
    assert all(np.array_equal(x[1], z[1]) for x, z in zip(a, b))
    assert not all(np.array_equal(x[1], z[1]) for x, z in zip(a, c))


def test_too_few_patients_for_the_folds_is_one_clear_sentence():
    y = np.array([0, 1, 0, 1, 1, 1])
    groups = np.array(["a", "b", "c", "d", "d", "d"])
    with pytest.raises(ClassifyError, match=r"4 patients, fewer than the 5 CV folds.*lower --cv to at most 4"):
        evaluate.grouped_splits(y, groups, 5, 0)
    y = np.array([0, 1, 1, 1, 1, 1, 0, 1])
    groups = np.array(list("abcdefgh"))
    with pytest.raises(ClassifyError, match=r"Class 'NORMAL' has 2 patients.*lower --cv to at most 2"):
        evaluate.grouped_splits(y, groups, 3, 0, classes=["NORMAL", "PNEUMONIA"])


def test_holdout_patients_is_patient_disjoint_stratified_and_about_the_fraction():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(200), rng.integers(1, 4, 200))
    patient_label = (rng.random(200) < 0.7).astype(int)
    y = patient_label[groups]
    train, test = evaluate.holdout_patients(y, groups, 0.2, seed=0)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == len(y)
    assert 30 <= len(np.unique(groups[test])) <= 50  # a hash draw per patient: about 40 of 200
    test_share = patient_label[np.unique(groups[test])].mean()
    assert abs(test_share - patient_label.mean()) < 0.1
    again = evaluate.holdout_patients(y, groups, 0.2, seed=0)
    assert np.array_equal(again[1], test)


def test_holdout_patients_never_moves_a_patient_when_patients_are_added():
    """Issue 8, case 6: the fallback hold-out is a per-patient hash, so new patients leave old ones in place."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(150), 2)
    y = (rng.random(150) < 0.6).astype(int)[groups]
    _, test = evaluate.holdout_patients(y, groups, 0.2, seed=0)
    more_groups = np.concatenate([groups, np.repeat(np.arange(150, 160), 2)])
    more_y = np.concatenate([y, np.tile([0, 1], 10)])
    _, more_test = evaluate.holdout_patients(more_y, more_groups, 0.2, seed=0)
    old_test = set(groups[test])
    assert set(more_groups[more_test]) & set(range(150)) == old_test


def test_holdout_patients_keeps_both_sides_of_every_small_stratum():
    for seed in range(30):
        y = np.array([0, 0, 1, 1, 1, 1])
        groups = np.arange(6)
        train, test = evaluate.holdout_patients(y, groups, 0.2, seed=seed)
        assert set(y[train]) == {0, 1} and set(y[test]) == {0, 1}


# ---------------------------------------------------------------- DeLong and bootstrap


def test_fast_delong_matches_the_definition_and_scikit_learn_with_ties():
    y, score = _scores(n=250, seed=5, rounding=1)
    result = evaluate.delong_ci(y, score)
    naive_auc, naive_se = _naive_delong(y, score)
    assert result["value"] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert result["value"] == pytest.approx(naive_auc, abs=1e-12)
    assert result["se"] == pytest.approx(naive_se, rel=1e-9)
    assert result["method"] == "delong"
    assert result["ci_low"] < result["value"] < result["ci_high"]


def test_delong_ci_agrees_with_a_large_bootstrap():
    y, score = _scores(n=400, seed=6, rounding=2)
    delong = evaluate.delong_ci(y, score)
    boot = evaluate.bootstrap_ci(lambda a, b: evaluate.auc("binary", a, b), y, score, n_boot=5000, seed=1)
    assert boot["value"] == pytest.approx(delong["value"])
    assert abs(boot["ci_low"] - delong["ci_low"]) < 0.01
    assert abs(boot["ci_high"] - delong["ci_high"]) < 0.01
    assert boot["se"] == pytest.approx(delong["se"], rel=0.08)


def test_delong_ci_is_clipped_to_the_unit_interval():
    y = np.array([0] * 8 + [1] * 8)
    score = np.concatenate([np.linspace(0, 0.4, 8), np.linspace(0.35, 1, 8)])
    result = evaluate.delong_ci(y, score)
    assert 0.0 <= result["ci_low"] <= result["value"] <= result["ci_high"] <= 1.0


def test_paired_delong_identical_scores_give_p_one_and_different_scores_a_small_p():
    y, good = _scores(n=400, shift=1.5, seed=7)
    rng = np.random.default_rng(8)
    noise = rng.normal(size=len(y))
    assert evaluate.delong_paired_pvalue(y, good, good) == 1.0
    assert evaluate.delong_paired_pvalue(y, good, noise) < 1e-6
    p_ab = evaluate.delong_paired_pvalue(y, good, good + 0.8 * noise)
    assert p_ab == pytest.approx(evaluate.delong_paired_pvalue(y, good + 0.8 * noise, good))
    assert 0.0 < p_ab < 1.0


def test_grouped_bootstrap_resamples_patients_not_rows():
    rng = np.random.default_rng(9)
    y_patient = rng.integers(0, 2, 120)
    s_patient = y_patient * 0.7 + rng.normal(size=120)
    groups = np.repeat(np.arange(120), 10)  # every patient contributes 10 identical rows
    y, score = y_patient[groups], s_patient[groups]
    metric = lambda a, b: evaluate.auc("binary", a, b)  # noqa: E731
    by_row = evaluate.bootstrap_ci(metric, y, score, n_boot=400, seed=0)
    by_patient = evaluate.bootstrap_ci(metric, y, score, n_boot=400, seed=0, groups=groups)
    one_row_each = evaluate.bootstrap_ci(metric, y_patient, s_patient, n_boot=400, seed=0)
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(by_patient) > 2 * width(by_row)
    assert width(by_patient) == pytest.approx(width(one_row_each), rel=0.25)


# ---------------------------------------------------------------- thresholds


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    y, score = _scores(n=300, seed=10, rounding=2)
    chosen = evaluate.choose_threshold(y, score, "youden")
    best = max(((score[y == 1] >= t).mean() + (score[y == 0] < t).mean(), t) for t in np.unique(score))
    assert chosen["oof_sensitivity"] + chosen["oof_specificity"] == pytest.approx(best[0])
    assert chosen["oof_sensitivity"] == pytest.approx((score[y == 1] >= chosen["value"]).mean())


def test_sensitivity_and_specificity_rules_pick_the_extreme_threshold_that_qualifies():
    y, score = _scores(n=300, seed=11, rounding=2)
    candidates = np.unique(score)
    sens = evaluate.choose_threshold(y, score, "sens@0.95")
    assert sens["oof_sensitivity"] >= 0.95
    higher = candidates[candidates > sens["value"]]
    assert (score[y == 1] >= higher.min()).mean() < 0.95
    spec = evaluate.choose_threshold(y, score, "spec@0.90")
    assert spec["oof_specificity"] >= 0.90
    lower = candidates[candidates < spec["value"]]
    assert (score[y == 0] < lower.max()).mean() < 0.90


def test_f1_rule_maximises_f1():
    y, score = _scores(n=200, seed=12, rounding=2)
    chosen = evaluate.choose_threshold(y, score, "f1")

    def f1(t):
        pred = score >= t
        tp = (pred & (y == 1)).sum()
        return 2 * tp / (pred.sum() + (y == 1).sum())

    assert f1(chosen["value"]) == pytest.approx(max(f1(t) for t in np.unique(score)))


@pytest.mark.parametrize("rule", ["youdn", "sens@95", "spec@1.5", "sens@", "f2"])
def test_a_bad_threshold_rule_lists_the_allowed_forms(rule):
    y, score = _scores(n=50)
    with pytest.raises(ClassifyError, match=r"'threshold_rule' parameter must be one of .*sens@X"):
        evaluate.choose_threshold(y, score, rule)


def test_threshold_uses_only_the_rows_it_is_given():
    y, score = _scores(n=300, seed=13, rounding=2)
    oof = np.arange(200)
    first = evaluate.choose_threshold(y[oof], score[oof])
    y_changed = y.copy()
    y_changed[200:] = 1 - y_changed[200:]  # "test" rows flipped
    second = evaluate.choose_threshold(y_changed[oof], score[oof])
    assert first == second


# ---------------------------------------------------------------- test metrics


def test_binary_test_metrics_follow_their_definitions_and_serialise():
    y, score = _scores(n=300, seed=14, rounding=3)
    p = 1 / (1 + np.exp(-score))
    metrics = evaluate.evaluate_test("binary", y, p, ["NORMAL", "PNEUMONIA"], {"value": 0.6})
    pred = (p >= 0.6).astype(int)
    (tn, fp), (fn, tp) = confusion_matrix(y, pred)
    assert metrics["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert metrics["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert metrics["specificity"] == pytest.approx(tn / (tn + fp))
    assert metrics["ppv"] == pytest.approx(tp / (tp + fp))
    assert metrics["npv"] == pytest.approx(tn / (tn + fn))
    assert metrics["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert metrics["balanced_accuracy"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert metrics["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["classification_report"]["PNEUMONIA"]["recall"] == pytest.approx(metrics["sensitivity"])
    json.dumps(metrics, allow_nan=False)


def test_undefined_ratios_are_null_not_nan():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    metrics = evaluate.evaluate_test("binary", y, p, ["a", "b"], 0.9)  # nothing called positive
    assert metrics["ppv"] is None
    assert metrics["sensitivity"] == 0.0
    json.dumps(metrics, allow_nan=False)


def test_multiclass_and_multilabel_test_metrics():
    rng = np.random.default_rng(15)
    y = rng.integers(0, 3, 240)
    proba = rng.dirichlet([1, 1, 1], 240)
    proba[np.arange(240), y] += 0.3
    proba /= proba.sum(axis=1, keepdims=True)
    metrics = evaluate.evaluate_test("multiclass", y, proba, ["a", "b", "c"], None)
    assert metrics["auc"]["value"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    assert metrics["auc"]["ci_low"] < metrics["auc"]["value"] < metrics["auc"]["ci_high"]
    assert set(metrics["per_class_auc"]) == {"a", "b", "c"}
    assert metrics["per_class_auc"]["b"]["value"] == pytest.approx(roc_auc_score(y == 1, proba[:, 1]))
    assert metrics["accuracy"] == pytest.approx((proba.argmax(1) == y).mean())
    assert np.array(metrics["confusion_matrix"]).shape == (3, 3)
    json.dumps(metrics, allow_nan=False)

    yl = rng.integers(0, 2, (240, 3))
    yl[:, 2] = 0  # a label absent from the test rows
    pl = np.clip(rng.random((240, 3)) * 0.6 + 0.4 * yl, 0, 1)
    metrics = evaluate.evaluate_test("multilabel", yl, pl, ["x", "y", "z"], [0.5, 0.4, 0.5])
    assert metrics["threshold"] == [0.5, 0.4, 0.5]
    assert metrics["per_class_auc"]["z"]["value"] is None
    assert metrics["auc"]["method"] == "bootstrap"
    assert metrics["auc"]["value"] == pytest.approx(np.mean([roc_auc_score(yl[:, k], pl[:, k]) for k in (0, 1)]))
    assert "auc_note" in metrics
    assert np.array(metrics["confusion_matrix"]).shape == (3, 2, 2)
    json.dumps(metrics, allow_nan=False)
