"""Stage two's memory stays near the loaded matrix: peak allocations of the audit and of a run, measured.

tracemalloc counts numpy's allocations (the embedding matrix, its copies, scikit-learn's temporaries),
so the peak it reports above the loaded FeatureSet is what stage two adds to the matrix. A float64 copy
of X, a per-fold copy where a view does, or a scaler's whole-matrix temporaries push it over the bound.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from cachefactory import signal_dataset, write_cache

from featx.classify import audit, stage
from featx.classify.estimators import RowBlockScaler
from featx.extract import store


def _peak(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A 7,500 x 1,024 float32 cache (29 MiB), loaded: 6,000 training rows of 2,000 patients, 1,500 test rows."""
    folder = tmp_path_factory.mktemp("memory")
    data = signal_dataset(n_train_patients=2000, images_per_patient=(3, 3), n_test=1500, dim=1024, seed=0)
    path = write_cache(
        folder / "tiny.h5", {"avg": data["X"]}, data["y"], data["classes"], data["split"], data["patient_id"]
    )
    return folder, path, store.load(path, "avg")


SLACK = 2 * 1024**2  # bookkeeping that does not grow with the matrix (row ids, split names, small results)


def test_the_duplicate_audit_adds_about_one_matrix(loaded):
    folder, _, features = loaded
    rows = stage.split_rows(features, stage.ClassifyConfig(features_dir=folder))
    audit._faiss()  # imported before measuring: a library's import is not the audit's memory
    matrix = features.X.nbytes
    for method in ("exact", "index"):
        peak = _peak(
            lambda how=method: audit.near_duplicates(
                features.X,
                features.split[np.r_[rows.train, rows.test]],
                np.r_[np.zeros(len(rows.train)), np.ones(len(rows.test))],
                rows=np.r_[rows.train, rows.test],
                method=how,
            )
        )
        # the one float32 unit copy of the audited rows, and then exact: similarity blocks of an eighth of
        # the matrix; index: a cell's rows against its nearest cells' (a constant: it does not grow with N)
        row_bytes = features.X.shape[1] * 4
        working = matrix / 3 if method == "exact" else 3 * audit.INDEX_NPROBE * audit.INDEX_CELL_ROWS * row_bytes
        assert peak <= matrix + working + SLACK, (method, peak / matrix)


def test_a_logreg_run_with_its_audits_stays_within_two_matrices(loaded, monkeypatch):
    folder, path, features = loaded
    # the scaler reads row blocks above this size (64 MiB by default: a constant next to the field's matrices)
    monkeypatch.setattr(RowBlockScaler, "BLOCK_BYTES", 1024**2)
    config = stage.ClassifyConfig(features_dir=folder, classifiers=("logreg",), cv=5, n_jobs=1, quick=True)
    plan = stage.RunPlan(path, "tiny", "avg", "logreg")
    matrix = features.X.nbytes
    stage.fit_run(plan, config, features)  # warm: imports and first-use caches are not the run's memory
    peak = _peak(lambda: stage.fit_run(plan, config, features))
    # training rows are a view of the loaded matrix; per fold: its fit rows and their scaled copy, its
    # held-out rows and theirs (about 1.6 matrices at 5 folds); never a float64 copy of X (+1.6 more)
    assert peak <= 2.0 * matrix + SLACK, peak / matrix


def test_row_block_scaler_matches_standard_scaler():
    from sklearn.preprocessing import StandardScaler

    X = np.random.default_rng(0).normal(loc=3.0, size=(5000, 40)).astype(np.float32)
    whole = StandardScaler().fit(X)
    small = RowBlockScaler().fit(X)  # below BLOCK_BYTES: StandardScaler's own fit, bit-identical
    assert np.array_equal(small.mean_, whole.mean_) and np.array_equal(small.scale_, whole.scale_)
    blocked = RowBlockScaler()
    blocked.BLOCK_BYTES = 40 * 4 * 700  # 700-row blocks
    blocked.fit(X)
    np.testing.assert_allclose(blocked.mean_, whole.mean_, rtol=1e-10)
    np.testing.assert_allclose(blocked.scale_, whole.scale_, rtol=1e-7)
    assert blocked.n_samples_seen_ == whole.n_samples_seen_ == 5000


def test_xgboost_bins_large_training_rows_in_chunks_without_copying_them(monkeypatch):
    from featx.classify import estimators

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6000, 256)).astype(np.float32)  # 6 MiB
    y = (X[:, 0] + rng.normal(size=6000) > 0).astype(int)

    def fit():
        return estimators.EarlyStoppingXGB(n_estimators=5, early_stopping_rounds=2).fit(X, y)

    whole = fit()
    copied = _peak(fit)
    monkeypatch.setattr(estimators, "CHUNKED_BINNING_BYTES", X.nbytes // 16)
    chunked = _peak(fit)
    # one copy of the 85% inner-training rows before; after, one chunk of them and the 15% validation rows
    assert copied > 0.85 * X.nbytes
    assert chunked < 0.3 * X.nbytes
    np.testing.assert_array_equal(fit().predict_proba(X), whole.predict_proba(X))  # the same bins and trees


def test_a_dense_fit_trains_without_a_standardised_copy_of_the_matrix(monkeypatch):
    from featx.classify import estimators

    rng = np.random.default_rng(0)
    X = rng.normal(loc=2.0, size=(20_000, 256)).astype(np.float32)  # 20 MiB
    y = (X[:, 0] + rng.normal(size=20_000) > 2.0).astype(int)
    estimators.DenseHead(max_epochs=1).fit(X[:500], y[:500])  # TensorFlow started, a trainer built and kept
    held = []
    train = estimators._HeadsTrainer.train

    def measured(self, *args):
        held.append(tracemalloc.get_traced_memory()[0])
        return train(self, *args)

    monkeypatch.setattr(estimators._HeadsTrainer, "train", measured)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        estimators.DenseHead(max_epochs=1).fit(X, y)
    finally:
        tracemalloc.stop()
    # the rows are standardised a batch at a time inside the trainer's graph: no (X - mean) / scale of all of them
    assert held and held[0] - before < 0.25 * X.nbytes
