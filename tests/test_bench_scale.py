"""featx bench scale: its synthetic caches are real caches (the writer's checks pass) of the asked shape."""

from __future__ import annotations

import os

import numpy as np

from featx.bench.scale import IMAGES_PER_PATIENT, TEST_FRACTION, write_synthetic_cache
from featx.extract import store


def test_synthetic_caches_go_through_the_real_writer(tmp_path):
    path = write_synthetic_cache(tmp_path / "synthetic.h5", n_rows=1001, dim=24, n_labels=1, seed=0)
    store.read_header(path, verify=True)  # checksums and the content sha256
    features = store.load(path, "avg")
    assert features.X.shape == (1001, 24) and features.X.dtype == np.float32 and np.all(features.X >= 0)
    split = np.asarray(features.split).astype(str)
    train = np.flatnonzero(split == "train")
    assert np.array_equal(train, np.arange(len(train)))  # split order: training rows are one run
    assert abs(np.mean(split == "test") - TEST_FRACTION) < 0.02
    patients = np.asarray(features.patient_id).astype(str)
    assert len(np.unique(patients)) == (1001 + IMAGES_PER_PATIENT - 1) // IMAGES_PER_PATIENT
    assert not set(patients[split == "train"]) & set(patients[split == "test"])
    assert set(np.unique(features.y)) == {0, 1}


def test_multilabel_synthetic_caches_have_every_label_in_both_splits(tmp_path):
    path = write_synthetic_cache(tmp_path / "nih.h5", n_rows=2000, dim=16, n_labels=14, seed=1)
    features = store.load(path, "avg")
    assert features.multilabel and features.y.shape == (2000, 14) and len(features.classes) == 14
    split = np.asarray(features.split).astype(str)
    for rows in (split == "train", split == "test"):
        assert np.all(features.y[rows].sum(axis=0) > 0)


def test_tree_memory_counts_the_memory_of_worker_processes():
    import subprocess
    import sys
    import time

    from featx.bench.scale import TreeMemory, _pss_mib

    alone = _pss_mib(os.getpid())
    with TreeMemory() as tree:
        worker = subprocess.Popen(
            [sys.executable, "-c", "import time; block = bytearray(96 * 1024**2); time.sleep(2)"],
        )
        time.sleep(1.5)
        worker.wait()
    # the worker's 96 MiB block (private pages, written by bytearray's zeroing) is in the tree's peak
    assert tree.peak_mib > alone + 90
