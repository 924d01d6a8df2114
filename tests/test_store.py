"""The HDF5 embedding cache: layout, hit / stale / lock, resume, atomic finish, reading."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from featx.errors import CacheError, LockError, StaleCacheError
from featx.extract import store

N = 10
ATTRS = {
    "featx_version": "0.1.0",
    "backbone": "tiny",
    "weights": "random",
    "weights_sha256": "0" * 64,
    "weights_seed": 0,
    "image_size": [32, 32],
    "resize_mode": "stretch",
    "preprocess": "none",
    "manifest_sha256": "a" * 64,
    "data_root": "/data",
    "created_utc": "2024-01-01T00:00:00+00:00",
}
WIDTHS = {"avg": 4, "max": 4}


def rows(n=N):
    return dict(
        ids=[f"img/{i:03d}.png" for i in range(n)],
        labels=np.array([i % 2 for i in range(n)], dtype=np.int8),
        classes=["NORMAL", "PNEUMONIA"],
        split=["train"] * (n - 2) + ["test"] * 2,
        patient_id=[f"p{i // 2}" for i in range(n)],
    )


def embeddings(start, stop, width=4):
    base = np.arange(start, stop, dtype=np.float32)[:, None] + np.arange(width, dtype=np.float32)[None, :] / 10
    return {"avg": base + 1, "max": base + 2}


def open_writer(path, attrs=ATTRS, widths=WIDTHS, n=N, **kwargs):
    return store.open_writer(path, attrs=attrs, widths=widths, batch_rows=4, **rows(n), **kwargs)


def write_all(writer, start=0, stop=N, step=4, fail=()):
    for first in range(start, stop, step):
        last = min(first + step, stop)
        ok = np.array([row not in fail for row in range(first, last)])
        errors = [(f"img/{row:03d}.png", "truncated file") for row in range(first, last) if row in fail]
        writer.write(first, embeddings(first, last), ok, errors)


def assert_same_datasets(want: h5py.File, got: h5py.File) -> None:
    names = []
    want.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    assert "embeddings/avg" in names
    for name in names:
        a, b = want[name][()], got[name][()]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype.kind == "O":
            assert a.tolist() == b.tolist(), name
        else:
            assert a.tobytes() == b.tobytes(), name


def build(path, fail=()):
    writer = open_writer(path)
    write_all(writer, fail=fail)
    return writer.finish()


def test_complete_cache_has_the_format_1_layout(tmp_path):
    path = build(tmp_path / "tiny.h5", fail=(5,))
    assert path == tmp_path / "tiny.h5"
    assert not store.partial_path(path).exists() and not store.lock_path(path).exists()
    with h5py.File(path, "r") as handle:
        attrs = store.read_attrs(handle)
        assert attrs["format"] == 1 and attrs["complete"] is True and attrs["n_done"] == N
        assert attrs["poolings"] == ["avg", "max"] and attrs["image_size"] == [32, 32] and attrs["weights_seed"] == 0
        assert list(handle["ids"].asstr()[:3]) == ["img/000.png", "img/001.png", "img/002.png"]
        assert handle["labels"].dtype == np.int8
        assert list(handle["labels"].attrs["classes"]) == ["NORMAL", "PNEUMONIA"]
        assert handle["embeddings/avg"].dtype == np.float32 and handle["embeddings/avg"].shape == (N, 4)
        assert handle["embeddings/avg"].chunks[0] == 4
        assert list(handle["errors"].asstr()[:]) == ["img/005.png\ttruncated file"]
    features = store.load(path, "max")
    assert features.X.shape == (N, 4)
    np.testing.assert_array_equal(features.X[5], 0)  # failed row is zero whatever the model said
    np.testing.assert_array_equal(features.X[6], embeddings(6, 7)["max"][0])
    assert features.ok.tolist() == [row != 5 for row in range(N)]
    assert features.classes == ("NORMAL", "PNEUMONIA") and not features.multilabel
    assert features.backbone == "tiny" and features.random_weights
    assert features.sha256 == store.file_sha256(path)
    assert list(features.split[-2:]) == ["test", "test"] and features.patient_id[3] == "p1"


def test_matching_complete_cache_is_a_hit_and_a_subset_of_poolings_too(tmp_path):
    path = build(tmp_path / "tiny.h5")
    before = path.stat().st_mtime_ns
    assert open_writer(path) is None
    assert open_writer(path, widths={"avg": 4}) is None
    assert path.stat().st_mtime_ns == before
    assert not store.lock_path(path).exists()


def test_stale_cache_names_every_differing_key(tmp_path):
    path = build(tmp_path / "tiny.h5")
    changed = {**ATTRS, "weights_seed": 7, "resize_mode": "pad"}
    with pytest.raises(StaleCacheError) as raised:
        open_writer(path, attrs=changed)
    message = str(raised.value)
    assert "weights_seed" in message and "resize_mode" in message and "--force" in message
    assert "backbone" not in message
    with pytest.raises(StaleCacheError, match="rows"):
        open_writer(path, n=N - 1)
    with pytest.raises(StaleCacheError, match="poolings"):
        open_writer(path, widths={"gem": 4})


def test_force_rebuilds_and_replaces_only_on_finish(tmp_path):
    path = build(tmp_path / "tiny.h5")
    changed = {**ATTRS, "weights_seed": 7}
    writer = open_writer(path, attrs=changed, force=True)
    write_all(writer, stop=4)
    assert store.load(path).attrs["weights_seed"] == 0  # the old cache is still the complete one
    write_all(writer, start=4)
    writer.finish()
    assert store.load(path).attrs["weights_seed"] == 7


def test_kill_between_writes_resumes_at_n_done_bit_identical(tmp_path):
    reference = build(tmp_path / "ref" / "tiny.h5", fail=(6,))
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=8, fail=(6,))
    writer.close()  # what a killed run leaves: a .partial at n_done=8
    assert store.partial_path(path).exists() and not path.exists()
    resumed = open_writer(path)
    assert resumed.n_done == 8 and resumed.resumed_from == 8 and "Resuming" in resumed.note
    assert resumed.n_failed == 1
    write_all(resumed, start=8, fail=(6,))
    resumed.finish()
    with h5py.File(reference, "r") as want, h5py.File(path, "r") as got:
        assert_same_datasets(want, got)


def test_errors_written_after_the_last_n_done_are_dropped_on_resume(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=4)
    writer.close()
    with h5py.File(store.partial_path(path), "r+") as handle:  # a kill between the data flush and n_done
        handle["errors"].resize((1,))
        handle["errors"][0] = "img/005.png\ttruncated file"
    resumed = open_writer(path)
    write_all(resumed, start=4)
    resumed.finish()
    assert store.load(path).errors == ()


def test_partial_with_other_settings_starts_over_and_says_so(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=4)
    writer.close()
    fresh = open_writer(path, attrs={**ATTRS, "weights_seed": 3})
    assert fresh.n_done == 0 and "different settings" in fresh.note and "weights_seed" in fresh.note
    fresh.close()


def test_unreadable_partial_starts_over(tmp_path):
    path = tmp_path / "tiny.h5"
    store.partial_path(path).write_bytes(b"not hdf5 at all")
    writer = open_writer(path)
    assert writer.n_done == 0 and "unreadable" in writer.note
    write_all(writer)
    writer.finish()
    assert len(store.load(path)) == N


def test_truncated_cache_is_unreadable_with_force_hint(tmp_path):
    path = build(tmp_path / "tiny.h5")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError, match="unreadable.*--force"):
        open_writer(path)
    with pytest.raises(CacheError, match="unreadable"):
        store.load(path)
    writer = open_writer(path, force=True)
    write_all(writer)
    writer.finish()
    assert len(store.load(path)) == N


def test_foreign_hdf5_file_is_not_a_cache(tmp_path):
    path = tmp_path / "tiny.h5"
    with h5py.File(path, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(CacheError, match="not a featx embedding cache"):
        store.load(path)
    with pytest.raises(CacheError, match="not a featx embedding cache"):
        open_writer(path)


def test_partial_and_incomplete_files_are_not_loadable(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=4)
    writer.close()
    with pytest.raises(CacheError, match="unfinished"):
        store.load(store.partial_path(path))
    with pytest.raises(CacheError, match="No embedding cache.*unfinished"):
        store.load(path)
    os.replace(store.partial_path(path), path)  # an unfinished file renamed by hand
    with pytest.raises(CacheError, match="incomplete"):
        store.load(path)
    with pytest.raises(CacheError, match="incomplete.*--force"):
        open_writer(path)
    assert store.list_caches(tmp_path) == []


def test_unknown_pooling_lists_the_cached_ones(tmp_path):
    path = build(tmp_path / "tiny.h5")
    with pytest.raises(CacheError, match=r"\['avg', 'max'\].*'gem'"):
        store.load(path, "gem")


def test_lock_held_by_a_live_process_refuses_a_second_writer(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    with pytest.raises(LockError, match=f"pid {os.getpid()}"):
        open_writer(path)
    writer.close()
    assert not store.lock_path(path).exists()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        store.lock_path(path).write_text(f"{sleeper.pid}\n")
        with pytest.raises(LockError, match=f"pid {sleeper.pid}.*writing"):
            open_writer(path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "tiny.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.lock_path(path).write_text(f"{dead.pid}\n")
    writer = open_writer(path)
    assert store.lock_path(path).read_text().strip() == str(os.getpid())
    write_all(writer)
    writer.finish()
    assert not store.lock_path(path).exists()


def test_writes_must_come_in_order(tmp_path):
    writer = open_writer(tmp_path / "tiny.h5")
    with pytest.raises(RuntimeError, match="in order"):
        writer.write(4, embeddings(4, 8), np.ones(4, bool))
    with pytest.raises(RuntimeError, match="finish"):
        writer.finish()
    writer.close()
    assert not store.partial_path(tmp_path / "tiny.h5").exists()  # nothing written: nothing left behind


def test_multilabel_labels_round_trip(tmp_path):
    path = tmp_path / "tiny.h5"
    data = rows()
    data["labels"] = np.eye(3, dtype=np.int8)[np.arange(N) % 3]
    data["classes"] = ["a", "b", "c"]
    writer = store.open_writer(path, attrs=ATTRS, widths=WIDTHS, batch_rows=4, **data)
    write_all(writer)
    writer.finish()
    features = store.load(path)
    assert features.multilabel and features.y.shape == (N, 3) and features.classes == ("a", "b", "c")


def test_list_caches_returns_only_complete_featx_files(tmp_path):
    build(tmp_path / "b.h5")
    build(tmp_path / "a.h5")
    (tmp_path / "junk.h5").write_bytes(b"junk")
    writer = open_writer(tmp_path / "c.h5")
    write_all(writer, stop=4)
    writer.close()
    assert store.list_caches(tmp_path) == [tmp_path / "a.h5", tmp_path / "b.h5"]
    assert store.list_caches(tmp_path / "missing") == []


def test_rows_are_written_into_preallocated_chunks(tmp_path):
    """No HDF5 metadata changes mid-run (what keeps a killed file readable): the file does not grow while rows stream in."""
    path = tmp_path / "tiny.h5"
    writer = store.open_writer(path, attrs=ATTRS, widths={"avg": 64}, batch_rows=64, **rows(2048))
    size_before = os.path.getsize(store.partial_path(path))
    for first in range(0, 2048, 64):
        writer.write(first, {"avg": np.ones((64, 64), np.float32)}, np.ones(64, bool))
    assert os.path.getsize(store.partial_path(path)) == size_before
    writer.finish()
    assert store.load(path).X.sum() == 2048 * 64
