"""The HDF5 embedding cache: layout, hit / stale / lock, resume, atomic finish, reading, damage, full disks."""

from __future__ import annotations

import csv
import errno
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from cachedamage import DAMAGE, delete, flip_in_chunk

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


def digest(row: int) -> str:
    return f"{row:064x}"


def write_all(writer, start=0, stop=N, step=4, fail=()):
    for first in range(start, stop, step):
        last = min(first + step, stop)
        ok = np.array([row not in fail for row in range(first, last)])
        errors = [(f"img/{row:03d}.png", "truncated file") for row in range(first, last) if row in fail]
        writer.write(first, embeddings(first, last), ok, errors, [digest(row) for row in range(first, last)])


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


def test_complete_cache_has_the_format_2_layout(tmp_path):
    path = build(tmp_path / "tiny.h5", fail=(5,))
    assert path == tmp_path / "tiny.h5"
    assert not store.partial_path(path).exists() and not store.lock_path(path).exists()
    with h5py.File(path, "r") as handle:
        attrs = store.read_attrs(handle)
        assert attrs["format"] == 2 and attrs["complete"] is True and attrs["n_done"] == N
        assert attrs["poolings"] == ["avg", "max"] and attrs["image_size"] == [32, 32] and attrs["weights_seed"] == 0
        assert attrs["content_sha256"] == store.content_sha256(handle)
        assert list(handle["ids"].asstr()[:3]) == ["img/000.png", "img/001.png", "img/002.png"]
        assert handle["labels"].dtype == np.int8
        assert store.read_attrs(handle["labels"])["classes"] == ["NORMAL", "PNEUMONIA"]
        assert handle["embeddings/avg"].dtype == np.float32 and handle["embeddings/avg"].shape == (N, 4)
        assert handle["embeddings/avg"].chunks[0] == 4
        assert handle["sha256"].dtype == np.dtype("S64") and handle["sha256"][2] == digest(2).encode()
        assert list(handle["errors"].asstr()[:]) == ["img/005.png\ttruncated file"]
        # HDF5 checks a fletcher32 checksum per chunk on every read of every dataset (text is fixed-length so
        # it can take the filter; the content sha256 covers the attributes)
        names = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert sorted(names) == sorted(
            ["ids", "labels", "split", "patient_id", "ok", "sha256", "errors"] + ["embeddings/avg", "embeddings/max"]
        )
        for name in names:
            assert handle[name].fletcher32, name
    features = store.load(path, "max")
    assert features.X.shape == (N, 4)
    np.testing.assert_array_equal(features.X[5], 0)  # failed row is zero whatever the model said
    np.testing.assert_array_equal(features.X[6], embeddings(6, 7)["max"][0])
    assert features.ok.tolist() == [row != 5 for row in range(N)]
    assert features.classes == ("NORMAL", "PNEUMONIA") and not features.multilabel
    assert features.backbone == "tiny" and features.random_weights
    assert features.sha256 == store.file_sha256(path)
    assert list(features.split[-2:]) == ["test", "test"] and features.patient_id[3] == "p1"
    assert features.image_sha256.tolist() == [digest(row) for row in range(N)]
    assert store.read_rows(path).failures == [("img/005.png", "truncated file")]
    with open(store.errors_csv_path(path), newline="") as handle:
        assert list(csv.reader(handle)) == [["path", "reason"], ["img/005.png", "truncated file"]]
    assert store.errors_csv_path(path) == tmp_path / "tiny.errors.csv"


def test_errors_csv_goes_when_a_rebuild_has_no_failures(tmp_path):
    path = build(tmp_path / "tiny.h5", fail=(5,))
    assert store.errors_csv_path(path).exists()
    writer = open_writer(path, force=True)
    write_all(writer)
    writer.finish()
    assert not store.errors_csv_path(path).exists()


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


def test_failures_journaled_after_the_last_n_done_are_dropped_on_resume(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=4, fail=(2,))
    writer.close()
    journal = store.failures_journal_path(path)
    assert journal == tmp_path / "tiny.errors.csv.partial"
    with open(journal, "a") as handle:  # a kill after journaling row 5's failure, before its rows were flushed
        handle.write("5,img/005.png,truncated file\n6,img/00")  # and a line torn by the kill
    resumed = open_writer(path)
    write_all(resumed, start=4, fail=(2,))
    resumed.finish()
    assert store.load(path).errors == ("img/002.png\ttruncated file",)
    assert not journal.exists()


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


def _hold_lock_in_child(path) -> subprocess.Popen:
    """A child process that takes the cache's lock and holds it until its stdin closes."""
    code = "import sys; from featx.extract import store; store.acquire_lock(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_lock_held_by_a_live_process_refuses_a_second_writer(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    with pytest.raises(LockError, match=f"pid {os.getpid()}"):
        open_writer(path)
    writer.close()
    assert not store.lock_path(path).exists()
    holder = _hold_lock_in_child(path)
    try:
        with pytest.raises(LockError, match=f"pid {holder.pid}.*writing"):
            open_writer(path)
    finally:
        holder.stdin.close()
        holder.wait()
    writer = open_writer(path)  # the OS released the lock with the process
    writer.close()


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


def test_a_lock_taken_before_its_pid_is_written_is_not_stale(tmp_path):
    """What a racing process sees: the holder has the lock file but has not written its pid yet."""
    path = tmp_path / "tiny.h5"
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
        "print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(store.lock_path(path))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert store.lock_path(path).read_text() == ""
        with pytest.raises(LockError, match="Another featx process is writing"):
            open_writer(path)
    finally:
        holder.stdin.close()
        holder.wait()


def _race(path, barrier, won, index, n_workers, rounds) -> None:
    for round_ in range(rounds):
        barrier.wait(timeout=60)
        try:
            lock = store.acquire_lock(path)
        except LockError:
            lock = None
        won[round_ * n_workers + index] = lock is not None
        barrier.wait(timeout=60)  # everyone has tried while the winner still holds it
        if lock is not None:
            lock.release()
        barrier.wait(timeout=60)


def test_processes_racing_for_the_lock_never_both_get_it(tmp_path):
    """Four processes call acquire_lock at the same moment, 300 rounds: exactly one wins each round.

    (The pid-file lock of format 1 let two win in 2-16 of 300 rounds, in each of 8 runs.)
    """
    context = multiprocessing.get_context("fork")
    n_workers, rounds = 4, 300
    barrier = context.Barrier(n_workers)
    won = context.Array("b", n_workers * rounds)
    path = tmp_path / "tiny.h5"
    workers = [
        context.Process(target=_race, args=(path, barrier, won, index, n_workers, rounds)) for index in range(n_workers)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0] * n_workers
    winners = np.array(won[:], dtype=int).reshape(rounds, n_workers).sum(axis=1)
    assert int(np.sum(winners != 1)) == 0, f"rounds with two winners: {int(np.sum(winners > 1))}"
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
    """No HDF5 metadata changes mid-run (what keeps a killed file readable and a full disk harmless): the file
    neither grows nor gains blocks while rows stream in, failed images included."""
    path = tmp_path / "tiny.h5"
    writer = store.open_writer(path, attrs=ATTRS, widths={"avg": 64}, batch_rows=64, **rows(2048))
    before = os.stat(store.partial_path(path))
    for first in range(0, 2048, 64):
        ok = np.arange(first, first + 64) % 100 != 7
        failed = [(f"img/{row:03d}.png", "truncated file") for row in range(first, first + 64) if row % 100 == 7]
        writer.write(first, {"avg": np.ones((64, 64), np.float32)}, ok, failed)
    after = os.stat(store.partial_path(path))
    assert (after.st_size, after.st_blocks) == (before.st_size, before.st_blocks)
    writer.finish()
    assert store.load(path).X.sum() == (2048 - 21) * 64 and len(store.load(path).errors) == 21


# ---------------------------------------------------------------- damaged, inconsistent and old caches


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_cache_is_one_sentence_with_the_command_that_rebuilds_it(tmp_path, kind):
    """Extract's hit check and classify's planning read give the same sentence; --force rebuilds."""
    path = build(tmp_path / "features" / "tiny.h5", fail=(5,))
    damage, what = DAMAGE[kind]
    damage(path)
    with pytest.raises(CacheError) as extract_side:
        open_writer(path)
    with pytest.raises(CacheError) as classify_side:
        store.read_header(path, verify=True)
    message = str(extract_side.value)
    assert not isinstance(extract_side.value, StaleCacheError)
    assert message == str(classify_side.value) and len(message.splitlines()) == 1
    assert message.startswith(f"The embedding cache '{path}' is damaged (") and what in message, message
    assert message.endswith(
        f"rebuild it with `featx extract --backbone tiny --manifest MANIFEST.csv --data-root DATA --out {path.parent} --force`."
    )
    assert store.list_caches(path.parent) in ([], [path])  # never an exception
    writer = open_writer(path, force=True)
    write_all(writer, fail=(5,))
    writer.finish()
    assert store.check_cache(path, {**ATTRS, "poolings": ["avg"]}, N)


def test_the_rebuild_command_is_the_one_recorded_in_the_cache(tmp_path):
    path = build_with(
        tmp_path / "features" / "tiny.h5", extract_args="--backbone tiny --manifest /m.csv --data-root /d"
    )
    delete("ok")(path)
    with pytest.raises(CacheError, match="dataset /ok is missing") as raised:
        store.load(path)
    expected = f"featx extract --backbone tiny --manifest /m.csv --data-root /d --out {path.parent} --force"
    assert str(raised.value).endswith(f"rebuild it with `{expected}`.")
    assert store.extract_command(path, force=False) == expected[: -len(" --force")]


def build_with(path, **extra_attrs):
    writer = open_writer(path, attrs={**ATTRS, **extra_attrs})
    write_all(writer)
    return writer.finish()


def test_damage_found_while_loading_is_a_cache_error_too(tmp_path):
    path = build(tmp_path / "tiny.h5")
    flip_in_chunk("embeddings/max")(path)
    assert len(store.load(path, "avg")) == N  # the damaged chunk is not read
    with pytest.raises(CacheError, match=r"damaged \(a dataset fails its checksum\); rebuild it with .*--force"):
        store.load(path, "max")
    with pytest.raises(CacheError, match="damaged"):
        store.count_nonfinite(path, "max")


def test_a_format_1_cache_is_refused_with_the_rebuild_command(tmp_path):
    path = build(tmp_path / "tiny.h5")
    with h5py.File(path, "r+") as handle:  # what featx 0.1 wrote: no /sha256, no checksums, format 1
        del handle["sha256"]
        del handle.attrs["content_sha256"]
        handle.attrs["format"] = np.int64(1)
    expected = (
        f"The embedding cache '{path}' has format 1, this featx reads format 2; rebuild it with "
        f"`featx extract --backbone tiny --manifest MANIFEST.csv --data-root DATA --out {tmp_path} --force`."
    )
    for read in (lambda: open_writer(path), lambda: store.read_header(path), lambda: store.load(path)):
        with pytest.raises(CacheError) as raised:
            read()
        assert str(raised.value) == expected
    assert store.list_caches(tmp_path) == []


def test_a_partial_whose_written_rows_fail_their_checksums_starts_over(tmp_path):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=8)
    writer.close()
    flip_in_chunk("embeddings/avg")(store.partial_path(path))
    fresh = open_writer(path)
    assert fresh.n_done == 0 and "damaged; starting over" in fresh.note
    write_all(fresh)
    fresh.finish()
    reference = build(tmp_path / "ref" / "tiny.h5")
    with h5py.File(reference, "r") as want, h5py.File(path, "r") as got:
        assert_same_datasets(want, got)


@pytest.mark.parametrize("seed", range(12))
def test_random_flipped_bytes_are_caught_or_harmless(tmp_path, seed):
    """Bytes flipped anywhere: a CacheError sentence, or (a flip in unused space) the very same content."""
    reference = build(tmp_path / "ref.h5", fail=(5,))
    path = tmp_path / "features" / "tiny.h5"
    path.parent.mkdir()
    data = bytearray(reference.read_bytes())
    rng = np.random.default_rng(seed)
    for offset in rng.integers(0, len(data), 8):
        data[offset] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    try:
        store.read_header(path, verify=True)
    except CacheError as error:
        assert str(error).startswith(f"The embedding cache '{path}' is ") and "--force`." in str(error)
        assert len(str(error).splitlines()) == 1
        return
    got, want = store.load(path, "avg"), store.load(reference, "avg")
    for name in ("X", "y", "ok", "ids", "split", "patient_id", "image_sha256"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert got.errors == want.errors and got.attrs == want.attrs


# ---------------------------------------------------------------- full disks


def statvfs_with_free(n_bytes: int):
    real = os.statvfs

    def fake(path):
        stats = list(real(path))
        stats[4] = n_bytes // stats[1]  # f_bavail in units of f_frsize
        return os.statvfs_result(stats)

    return fake


def test_too_little_free_space_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    path = tmp_path / "tiny.h5"
    monkeypatch.setattr(os, "statvfs", statvfs_with_free(64 * 1024))
    with pytest.raises(
        CacheError,
        match=r"Not enough free space for '.*tiny.h5': it needs about 1.0 MiB more and .* has 0.1 MiB free; free space",
    ):
        open_writer(path)
    assert not store.partial_path(path).exists() and not store.lock_path(path).exists()


def test_the_free_space_check_counts_what_a_partial_already_holds(tmp_path, monkeypatch):
    n, widths = 4096, {"avg": 256}  # about 5 MiB, all of it allocated when the file is created
    path = tmp_path / "tiny.h5"
    writer = store.open_writer(path, attrs=ATTRS, widths=widths, batch_rows=256, **rows(n))
    writer.write(0, {"avg": np.ones((256, 256), np.float32)}, np.ones(256, bool))
    writer.close()
    monkeypatch.setattr(os, "statvfs", statvfs_with_free(2 * 1024 * 1024))
    resumed = store.open_writer(path, attrs=ATTRS, widths=widths, batch_rows=256, **rows(n))
    assert resumed.n_done == 256
    resumed.close()
    with pytest.raises(CacheError, match="Not enough free space"):
        store.open_writer(tmp_path / "other.h5", attrs=ATTRS, widths=widths, batch_rows=256, **rows(n))


def test_a_write_error_mid_run_is_one_sentence_keeps_the_rows_and_releases_the_lock(tmp_path, monkeypatch):
    path = tmp_path / "tiny.h5"
    writer = open_writer(path)
    write_all(writer, stop=4, fail=(1,))

    def disk_full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(h5py.Dataset, "__setitem__", disk_full)
        with pytest.raises(CacheError) as raised:
            write_all(writer, start=4)
    assert str(raised.value) == (
        f"No space left on device while writing '{store.partial_path(path)}'; "
        "free space and run the same command to resume."
    )
    writer.close()
    assert not store.lock_path(path).exists() and store.partial_path(path).exists()
    resumed = open_writer(path)
    assert resumed.n_done == 4 and resumed.n_failed == 1
    write_all(resumed, start=4, fail=(1,))
    resumed.finish()
    reference = build(tmp_path / "ref" / "tiny.h5", fail=(1,))
    with h5py.File(reference, "r") as want, h5py.File(path, "r") as got:
        assert_same_datasets(want, got)


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    import numpy as np

    from featx.errors import CacheError
    from featx.extract import store

    folder = Path(sys.argv[1])
    attrs = {"backbone": "tiny", **dict.fromkeys(store.MATCH_KEYS[2:-3], ""), "manifest_sha256": "a", "data_root": "/"}


    def rows(n):
        return dict(ids=[f"img/{i:04d}.png" for i in range(n)], labels=np.zeros(n, np.int8), classes=["a", "b"],
                    split=["train"] * n, patient_id=[f"p{i}" for i in range(n)])


    def attempt(step):
        try:
            step()
        except CacheError as error:
            print(error, flush=True)


    # 1. a cache larger than the disk: refused before anything is written
    attempt(lambda: store.open_writer(folder / "big.h5", attrs=attrs, widths={"avg": 4096}, **rows(512)))

    # 2. free space misreported (a quota, another writer): HDF5 itself runs out while creating the file
    real_statvfs = os.statvfs
    os.statvfs = lambda path: os.statvfs_result([*real_statvfs(path)[:4], 2**40, *real_statvfs(path)[5:]])
    attempt(lambda: store.open_writer(folder / "big.h5", attrs=attrs, widths={"avg": 4096}, **rows(512)))
    os.statvfs = real_statvfs

    # 3. the disk fills up mid-run (another program): the next rows that need new space fail
    writer = store.open_writer(folder / "tiny.h5", attrs=attrs, widths={"avg": 256}, batch_rows=64, **rows(512))
    for first in range(0, 128, 64):
        writer.write(first, {"avg": np.full((64, 256), first, np.float32)}, np.ones(64, bool))
    with open(folder / "filler", "wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"x" * 4096)
        except OSError:
            pass

    def rest():
        for first in range(128, 512, 64):
            failed = [(f"img/{row:04d}.png", "corrupt or truncated image data " + "x" * 200) for row in range(first, first + 64)]
            writer.write(first, {"avg": np.zeros((64, 256), np.float32)}, np.zeros(64, bool), failed)
        writer.finish()

    attempt(rest)
    writer.close()
    print("exit", flush=True)
    """
)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and mount); skipped where it cannot be made."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_is_one_sentence_and_resumes_once_space_is_freed(small_disk):
    """On a real 3 MiB filesystem: refused up front, HDF5 running out while creating, and the disk filling mid-run."""
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(small_disk)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-2000:]  # was -11: a segfault in h5py's flush
    lines = child.stdout.splitlines()
    no_space = "No space left on device while writing '{}'; free space and run the same command to resume."
    assert len(lines) == 4 and lines[-1] == "exit", child.stdout + child.stderr[-2000:]
    assert re.fullmatch(
        f"Not enough free space for '{re.escape(str(small_disk / 'big.h5'))}': it needs about 9.0 MiB more and "
        f"'{re.escape(str(small_disk))}' has "
        r"3.0 MiB free; free space \(or pass --out another disk\) and run the command again.",
        lines[0],
    ), lines[0]
    assert lines[1] == no_space.format(store.partial_path(small_disk / "big.h5"))
    assert lines[2] == no_space.format(store.partial_path(small_disk / "tiny.h5"))
    assert sorted(p.name for p in small_disk.iterdir()) == [
        "filler",
        "tiny.errors.csv.partial",
        "tiny.h5.partial",
    ]  # no lock

    (small_disk / "filler").unlink()
    n = 512
    rows_ = dict(
        ids=[f"img/{i:04d}.png" for i in range(n)],
        labels=np.zeros(n, np.int8),
        classes=["a", "b"],
        split=["train"] * n,
        patient_id=[f"p{i}" for i in range(n)],
    )
    path = small_disk / "tiny.h5"
    attrs = {"backbone": "tiny", **dict.fromkeys(store.MATCH_KEYS[2:-3], ""), "manifest_sha256": "a", "data_root": "/"}
    writer = store.open_writer(path, attrs=attrs, widths={"avg": 256}, batch_rows=64, **rows_)
    assert writer.n_done >= 128 and "Resuming" in writer.note, writer.note
    for first in range(writer.n_done, n, 64):
        writer.write(first, {"avg": np.full((64, 256), first, np.float32)}, np.ones(64, bool))
    writer.finish()
    assert (store.load(path).X[:128] == np.repeat([0, 64], 64)[:, None]).all()
