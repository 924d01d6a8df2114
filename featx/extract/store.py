"""The HDF5 embedding cache (format 2): layout, resumable writes, integrity checks, atomic finish, reading.

A writer works on `<name>.h5.partial` under a lock file `<name>.h5.lock` (an OS
lock, `fcntl.flock`, so exclusivity never depends on timing). Every row dataset
is allocated in full when the file is created (so the disk space is taken then),
a write only puts raw numbers into place and advances the `n_done` attribute in
place, and failed images go to a plain journal file until the finish: no HDF5
metadata changes mid-run, which keeps a killed file readable at its last flush
and a full disk from damaging it.
`n_done` moves only after the rows before it are flushed, so a resumed run starts
there and ends bit-identical to an uninterrupted one. `finish()` records a
sha256 of the whole content, marks the file complete and renames it to
`<name>.h5` with `os.replace` (atomic).

Trust: every dataset carries a per-chunk fletcher32 checksum (verified by HDF5
on every read; text is stored fixed-length so it can), and a content sha256 of
all datasets and attributes is recorded at finish and checked before a cache is
used. Every problem a reader can meet (missing or
inconsistent datasets, a checksum mismatch, a full disk) is one CacheError
sentence that names the file and the one command that fixes it.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import shlex
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featx.errors import CacheError, LockError, StaleCacheError, one_of_message, short_reason
from featx.files import atomic_write, file_sha256

FORMAT = 2
SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
ERRORS_SUFFIX = ".errors.csv"
META_GROUP = "meta"  # /meta/<column>: (N,) text per manifest metadata column; absent when the manifest has none

# Attributes that must agree for a cache to answer a request. The pooling list is
# compared as a subset (a cache holding avg and max answers a request for avg) and
# the row count is compared through the /ids dataset.
MATCH_KEYS = (
    "format",
    "backbone",
    "weights",
    "weights_sha256",
    "weights_seed",
    "image_size",
    "resize_mode",
    "preprocess",
    "poolings",
    "manifest_sha256",
    "data_root",
    "dicom_window",
)
# A match key a cache may lack because it was written before the key existed: read as this value.
NO_DICOM = "none"  # dicom_window of a cache whose manifest has no DICOM row
MATCH_DEFAULTS = {"dicom_window": NO_DICOM}
REQUIRED_ATTRS = tuple(key for key in MATCH_KEYS if key not in MATCH_DEFAULTS) + ("complete", "n_done")
# Left out of the content sha256: the two attributes a writer moves, and the hash itself.
UNSEALED_ATTRS = ("complete", "n_done", "content_sha256")
# One entry per row each (labels may be (N, K)); /errors, /embeddings/<pooling> and /meta/<column> come on top.
ROW_DATASETS = ("ids", "labels", "split", "patient_id", "ok", "sha256")
REQUIRED_DATASETS = ROW_DATASETS + ("errors",)

# Rows per HDF5 chunk are capped so one chunk stays a few MiB (flatten pooling is ~100 KiB a row).
MAX_CHUNK_BYTES = 4 * 1024 * 1024
# Text is stored fixed-length (UTF-8, padded to the longest value) so every dataset takes a fletcher32
# checksum and no value lives in HDF5's global heap (where a damaged length can hang the HDF5 reader).
# Hex sha256 of each image file; fixed length, so /sha256 is preallocated and checksummed like /ok.
SHA256_DTYPE = np.dtype("S64")
# Free space wanted beyond a cache's estimated size (HDF5 headers, chunk indexes, /errors).
SPACE_MARGIN = 1024 * 1024
# What h5py raises on a damaged file (a failed checksum is an OSError); MemoryError and interrupts pass.
_READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError)
# What h5py raises when the file system refuses a write (ENOSPC comes as any of the three, by call).
_WRITE_ERRORS = (OSError, RuntimeError, ValueError)


def cache_path(out_dir, backbone: str) -> Path:
    """The cache file of one backbone: out_dir / "<backbone>.h5"."""
    return Path(out_dir) / f"{backbone}{SUFFIX}"


def partial_path(path) -> Path:
    return Path(f"{path}{PARTIAL_SUFFIX}")


def lock_path(path) -> Path:
    return Path(f"{path}{LOCK_SUFFIX}")


def errors_csv_path(path) -> Path:
    """`<name>.errors.csv` beside `<name>.h5`: path and reason of every image that could not be read."""
    path = _final_path(path)
    return path.with_name(f"{path.stem}{ERRORS_SUFFIX}")


def failures_journal_path(path) -> Path:
    """`<name>.errors.csv.partial`: the failed images of an unfinished run (row, path, reason), one line appended
    per failure; `finish()` turns it into /errors and `<name>.errors.csv`."""
    return Path(f"{errors_csv_path(path)}{PARTIAL_SUFFIX}")


def _final_path(path) -> Path:
    """The `.h5` path of a cache or of its `.partial`."""
    path = Path(path)
    return path.with_name(path.name[: -len(PARTIAL_SUFFIX)]) if path.name.endswith(PARTIAL_SUFFIX) else path


# ---------------------------------------------------------------- attributes


def _plain(value):
    """An attribute value as plain Python (str, int, float, bool, list) so values compare equal."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _text(values: Sequence[str]) -> np.ndarray:
    """Strings as one fixed-length UTF-8 byte array (what _plain and `.asstr()` read back as str)."""
    encoded = [str(value).encode("utf-8") for value in values]
    return np.array(encoded, dtype=h5py.string_dtype("utf-8", max([len(item) for item in encoded] + [1])))


def _h5_value(value):
    """A Python attribute value in a form h5py stores without surprises (text fixed-length)."""
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, str) for item in value):
            return _text(value)
        return np.asarray(value)
    if isinstance(value, str):
        return _text([value])[0]
    if isinstance(value, bool):
        return np.bool_(value)
    return value


def _create_text(group: h5py.Group, name: str, values: Sequence[str]) -> h5py.Dataset:
    """A fixed-length UTF-8 text dataset with a fletcher32 checksum per chunk."""
    data = _text(values)
    rows_per_chunk = max(1, min(len(data), MAX_CHUNK_BYTES // data.dtype.itemsize))
    return group.create_dataset(name, data=data, maxshape=(None,), chunks=(rows_per_chunk,), fletcher32=True)


def read_attrs(handle: h5py.File | h5py.Dataset) -> dict:
    return {key: _plain(value) for key, value in handle.attrs.items()}


def differing_keys(cached: dict, wanted: dict, n_cached: int | None = None, n_wanted: int | None = None) -> list[str]:
    """The match keys on which a cache's attributes disagree with a request."""
    differ = []
    for key in MATCH_KEYS:
        default = MATCH_DEFAULTS.get(key)
        have, want = _plain(cached.get(key, default)), _plain(wanted.get(key, default))
        if key == "poolings":
            if not set(want or []) <= set(have or []):
                differ.append(key)
        elif have != want:
            differ.append(key)
    if n_cached is not None and n_wanted is not None and n_cached != n_wanted:
        differ.append("rows")
    return differ


# ---------------------------------------------------------------- what to do about a bad cache


def extract_command(path, attrs: dict | None = None, force: bool = True) -> str:
    """The one `featx extract` command that rebuilds (force) or finishes the cache at `path`.

    Uses the arguments the cache recorded when it was made (`extract_args`; from `attrs`, else read from
    the file), with `--out` set to the folder the cache is in now; placeholders where none can be read.
    """
    path = _final_path(path)
    if attrs is None:
        attrs = _peek_attrs(path) or _peek_attrs(partial_path(path))
    args = str(attrs.get("extract_args") or "")
    if not args:
        backbone = str(attrs.get("backbone") or path.stem)
        args = f"--backbone {shlex.quote(backbone)} --manifest MANIFEST.csv --data-root DATA"
    command = f"featx extract {args} --out {shlex.quote(str(path.parent))}"
    return f"{command} --force" if force else command


def _peek_attrs(path: Path) -> dict:
    """A file's root attributes, or {} when it cannot be read."""
    try:
        with h5py.File(path, "r") as handle:
            return read_attrs(handle)
    except Exception:  # any damage: the caller falls back to placeholders
        return {}


def _advice(path, attrs: dict | None) -> str:
    return f"rebuild it with `{extract_command(path, attrs or {})}`"


def _damaged(path, what: str, attrs: dict | None) -> CacheError:
    return CacheError(f"The embedding cache {str(path)!r} is damaged ({what}); {_advice(path, attrs)}.")


def _no_space(error: BaseException) -> bool:
    text = str(error)
    return (
        getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        or "No space left on device" in text
        or "Disk quota exceeded" in text
    )


def _write_error(target: Path, error: BaseException) -> CacheError:
    """A failed write as one sentence; the rows flushed before it stay and the same command resumes."""
    if _no_space(error):
        return CacheError(
            f"No space left on device while writing {str(target)!r}; free space and run the same command to resume."
        )
    return CacheError(
        f"Writing {str(target)!r} failed ({short_reason(error, 160)}); fix that and run the same command to resume."
    )


# ---------------------------------------------------------------- opening and checking


def _open_cache(path: Path, request: dict | None = None) -> tuple[h5py.File, dict]:
    """Open a cache (or .partial) read-only and check its layout; CacheError naming what is wrong and the fix.

    `request` (the attributes stage one asks for) supplies the rebuild command when the file records none.
    """
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise CacheError(
            f"The embedding cache {str(path)!r} is unreadable (truncated or not HDF5: {short_reason(error, 160)}); "
            f"{_advice(path, request)}."
        ) from None
    try:
        attrs = read_attrs(handle)
    except _READ_ERRORS as error:
        handle.close()
        raise _damaged(path, f"its attributes cannot be read: {short_reason(error, 120)}", request) from None
    advice_attrs = attrs if attrs.get("extract_args") else {**attrs, **(request or {})}
    try:
        _check_layout(handle, path, attrs, advice_attrs)
    except CacheError:
        handle.close()
        raise
    except _READ_ERRORS as error:
        handle.close()
        raise _damaged(path, f"its layout cannot be read: {short_reason(error, 120)}", advice_attrs) from None
    return handle, attrs


def _check_layout(handle: h5py.File, path: Path, attrs: dict, advice_attrs: dict) -> None:
    """Every attribute and dataset of format 2 present, with one row per manifest row."""
    if "format" not in attrs and "ids" not in handle:
        raise CacheError(
            f"The file {str(path)!r} is not a featx embedding cache (no format attribute, no /ids); "
            f"delete it or {_advice(path, advice_attrs)}."
        )
    if "format" in attrs and attrs["format"] != FORMAT:
        raise CacheError(
            f"The embedding cache {str(path)!r} has format {attrs['format']!r}, this featx reads format {FORMAT}; "
            f"{_advice(path, advice_attrs)}."
        )
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise _damaged(path, f"attribute(s) {', '.join(missing)} missing", advice_attrs)
    for name in REQUIRED_DATASETS:
        if not isinstance(handle.get(name), h5py.Dataset):
            raise _damaged(path, f"dataset /{name} is missing", advice_attrs)
    n_rows = handle["ids"].shape[0]
    for name in ROW_DATASETS:
        shape = handle[name].shape
        if not shape or shape[0] != n_rows:
            raise _damaged(path, f"/{name} has shape {shape}, /ids has {n_rows} rows", advice_attrs)
    if "classes" not in handle["labels"].attrs:
        raise _damaged(path, "/labels has no classes attribute", advice_attrs)
    meta = handle.get(META_GROUP)
    for name, dataset in meta.items() if isinstance(meta, h5py.Group) else ():
        if not isinstance(dataset, h5py.Dataset) or dataset.shape[:1] != (n_rows,):
            raise _damaged(path, f"/{META_GROUP}/{name} does not hold one value per row", advice_attrs)
    group = handle.get("embeddings")
    if not isinstance(group, h5py.Group):
        raise _damaged(path, "group /embeddings is missing", advice_attrs)
    for pooling in attrs["poolings"] or []:
        dataset = group.get(pooling)
        if not isinstance(dataset, h5py.Dataset):
            raise _damaged(path, f"dataset /embeddings/{pooling} is missing", advice_attrs)
        if dataset.ndim != 2 or dataset.shape[0] != n_rows:
            raise _damaged(
                path, f"/embeddings/{pooling} has shape {dataset.shape}, /ids has {n_rows} rows", advice_attrs
            )


def _check_finished(handle: h5py.File, path: Path, attrs: dict) -> None:
    """A `.h5` is complete, holds every row and its content sha256: featx never renames a `.partial` otherwise."""
    n_rows = handle["ids"].shape[0]
    n_done = attrs["n_done"]
    if attrs["complete"] is not True:
        raise _damaged(
            path, f"marked incomplete at {n_done} of {n_rows} rows, yet it is not an unfinished .partial", attrs
        )
    if n_done != n_rows:
        raise _damaged(path, f"marked complete, but n_done is {n_done} of {n_rows} rows", attrs)
    if not attrs.get("content_sha256"):
        raise _damaged(path, "no content checksum recorded", attrs)


class _UnreadableDataset(Exception):
    def __init__(self, name: str, reason: str):
        super().__init__(f"/{name}: {reason}")
        self.name = name
        self.reason = reason


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def _dataset_names(handle: h5py.File) -> list[str]:
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return sorted(names)


def _row_blocks(dataset: h5py.Dataset, stop: int | None = None) -> Iterator[slice]:
    """Slices of at most ~MAX_CHUNK_BYTES over the first `stop` rows (all by default)."""
    n = dataset.shape[0] if stop is None else stop
    row_bytes = dataset.dtype.itemsize * int(np.prod(dataset.shape[1:], dtype=np.int64))
    step = max(1, MAX_CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def content_sha256(handle: h5py.File) -> str:
    """sha256 of a cache's content: root attributes but UNSEALED_ATTRS, and every dataset (name, type, shape,
    attributes, values).

    Recorded as `content_sha256` when a cache is finished and recomputed to verify it; reading every
    chunk also makes HDF5 check each chunk's fletcher32 checksum. `_UnreadableDataset` names a dataset
    that cannot be read.
    """
    digest = hashlib.sha256()
    digest.update(_canonical({k: v for k, v in read_attrs(handle).items() if k not in UNSEALED_ATTRS}))
    for name in _dataset_names(handle):
        try:
            dataset = handle[name]
            digest.update(_canonical([name, dataset.dtype.str, list(dataset.shape), read_attrs(dataset)]))
            string = h5py.check_string_dtype(dataset.dtype)
            if dataset.ndim == 0:
                digest.update(_canonical(_plain(dataset[()])))
            elif string is not None and string.length is None:  # variable-length: HDF5 cannot checksum these
                for rows in _row_blocks(dataset):
                    digest.update(_canonical(dataset.asstr()[rows].tolist()))
            else:
                for rows in _row_blocks(dataset):
                    digest.update(np.ascontiguousarray(dataset[rows]).tobytes())
        except _READ_ERRORS as error:
            raise _UnreadableDataset(name, short_reason(error, 120)) from None
    return digest.hexdigest()


def _verify_content(handle: h5py.File, path: Path, attrs: dict) -> None:
    """Every chunk passes its checksum and the content sha256 matches the one recorded at finish."""
    try:
        actual = content_sha256(handle)
    except _UnreadableDataset as error:
        raise _damaged(path, _unreadable_what(f"/{error.name}", error.reason), attrs) from None
    if actual != attrs.get("content_sha256"):
        raise _damaged(path, "its content no longer matches the sha256 recorded when it was built", attrs)


@contextmanager
def _reading(path: Path, attrs: dict):
    """Any failure while reading a checked cache means damage (a failed chunk checksum is an OSError)."""
    try:
        yield
    except _READ_ERRORS as error:
        raise _damaged(path, _unreadable_what("a dataset", short_reason(error, 120)), attrs) from None


def _unreadable_what(name: str, reason: str) -> str:
    if "filter returned failure" in reason:  # how HDF5 reports a chunk whose fletcher32 checksum differs
        return f"{name} fails its checksum"
    return f"{name} cannot be read: {reason}"


# ---------------------------------------------------------------- lock


class CacheLock:
    """An exclusive `fcntl.flock` on `<cache>.lock`, which holds the writer's pid; the OS drops it when the
    process dies, so a lock is never stale."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go; a no-op once released."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def _read_lock_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return None


def acquire_lock(path: Path) -> CacheLock:
    """Take the OS lock on `<path>.lock` and write our pid into it.

    LockError when another open lock holds it: another process, or a second writer in this one. A
    holder removes the file on release, so a lock taken on a file no longer at that path is retried.
    """
    lock = lock_path(path)
    for _ in range(20):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            if _no_space(error):
                raise _write_error(lock, error) from None
            raise CacheError(
                f"Cannot create the lock file {str(lock)!r} ({error.strerror or error}); "
                "pass --out a folder you can write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_lock_pid(fd)
            os.close(fd)
            who = f"Another featx process (pid {pid})" if pid else "Another featx process"
            raise LockError(
                f"{who} is writing {str(path)!r}; wait for it to finish (or stop it) and run the command again."
            ) from None
        try:
            current = os.stat(lock)
            ours = os.fstat(fd)
            same = (current.st_dev, current.st_ino) == (ours.st_dev, ours.st_ino)
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed this file after we opened it: lock the one there now
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as error:
            CacheLock(lock, fd).release()
            raise _write_error(lock, error) from None
        return CacheLock(lock, fd)
    raise LockError(f"Could not take the lock {str(lock)!r}: other processes keep re-creating it; try again.")


# ---------------------------------------------------------------- writer


def _chunk_rows(width_bytes: int, batch_rows: int, n_rows: int) -> int:
    cap = max(1, MAX_CHUNK_BYTES // max(1, width_bytes))
    return max(1, min(batch_rows, cap, n_rows))


def _create_preallocated(group: h5py.Group, name: str, shape: tuple, dtype, chunk_rows: int) -> h5py.Dataset:
    """A row-chunked, fletcher32-checksummed dataset whose chunks are all allocated now and never filled.

    We write every row. An allocated chunk not yet written reads as zeros, whose fletcher32 is zero, so a
    partial write into it (read-modify-write) passes the check; the chunk size with its checksum is
    fixed, so a write never moves a chunk or grows the file.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((chunk_rows,) + tuple(shape[1:]))
    dcpl.set_fletcher32()
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(tuple(shape))
    tid = h5py.h5t.py_create(np.dtype(dtype), logical=True)
    dsid = h5py.h5d.create(group.id, name.encode("utf-8"), tid, space, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _open_for_writing(path: Path, mode: str) -> h5py.File:
    # No chunk cache: every write reaches the file inside the call that makes it, so a write error
    # (a full disk) surfaces there, not later in a flush or a garbage-collected handle.
    return h5py.File(path, mode, rdcc_nbytes=0)


class CacheWriter:
    """Appends rows in manifest order to a `.partial` cache; a context manager holding the lock.

    `note` says what open_writer found (a resume or a restart and why), for the caller to print.
    After finish(), `failures` lists (path, reason) of every image that could not be read.
    """

    def __init__(self, path: Path, handle: h5py.File, lock: CacheLock, n_total: int, created: bool, note: str | None):
        self.path = Path(path)
        self.partial = partial_path(path)
        self._handle: h5py.File | None = handle
        self._lock = lock
        self._created = created
        self.n_total = n_total
        self.n_done = int(_plain(handle.attrs["n_done"]))
        self.resumed_from = 0 if created else self.n_done
        self.n_failed = int(np.count_nonzero(~handle["ok"][: self.n_done].astype(bool)))
        self.note = note
        self.poolings = tuple(handle["embeddings"].keys())
        self.journal = failures_journal_path(path)
        self.failures: list[tuple[str, str]] = []

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._handle is None

    def write(
        self,
        start: int,
        embeddings: dict[str, np.ndarray],
        ok: np.ndarray,
        errors: Iterable = (),
        sha256: Sequence[str] | None = None,
    ) -> None:
        """Write rows start..start+b (b = len(ok)), then flush, then advance n_done.

        Rows whose image failed (ok False) are stored as zeros; each failure (path, reason) is appended to
        the failures journal first (/errors is written once, by finish). `sha256`: the hex sha256 of each
        row's file ("" where it could not be read; all "" when not given). CacheError when a file cannot
        be written (a full disk): the rows before this batch stay and the same command resumes from them.
        """
        handle = self._handle
        if handle is None:
            raise RuntimeError("write() on a closed CacheWriter")
        if start != self.n_done:
            raise RuntimeError(f"rows must be written in order: expected start {self.n_done}, got {start}")
        ok = np.asarray(ok, dtype=bool)
        stop = start + len(ok)
        if stop > self.n_total:
            raise RuntimeError(f"rows {start}..{stop} run past the {self.n_total} rows of the cache")
        if set(embeddings) != set(self.poolings):
            raise RuntimeError(f"expected poolings {list(self.poolings)}, got {list(embeddings)}")
        digests = np.array(list(sha256) if sha256 is not None else [""] * len(ok), dtype=SHA256_DTYPE)
        if len(digests) != len(ok):
            raise RuntimeError(f"{len(digests)} sha256 values for a batch of {len(ok)}")
        rows = {}
        for pooling, values in embeddings.items():
            values = np.array(values, dtype=np.float32, copy=True)
            if values.shape[0] != len(ok):
                raise RuntimeError(f"{pooling}: {values.shape[0]} rows for a batch of {len(ok)}")
            values[~ok] = 0.0
            rows[pooling] = values
        failed_rows = start + np.flatnonzero(~ok)
        errors = list(errors)
        if len(errors) != len(failed_rows):
            raise RuntimeError(f"{len(errors)} errors for {len(failed_rows)} rows with ok False")
        if errors:
            try:  # a plain file, so a full disk here leaves the HDF5 file untouched
                with open(self.journal, "a", newline="", encoding="utf-8") as journal:
                    csv.writer(journal, lineterminator="\n").writerows(
                        (int(row), path, reason) for row, (path, reason) in zip(failed_rows, errors)
                    )
            except OSError as error:
                raise _write_error(self.partial, error) from None
        try:  # into chunks allocated when the file was made: no HDF5 metadata changes here
            for pooling, values in rows.items():
                handle["embeddings"][pooling][start:stop] = values
            handle["ok"][start:stop] = ok
            handle["sha256"][start:stop] = digests
            handle.flush()
            handle.attrs.modify("n_done", np.int64(stop))
            handle.flush()
        except _WRITE_ERRORS as error:
            raise _write_error(self.partial, error) from None
        self.n_done = stop
        self.n_failed += int(np.count_nonzero(~ok))

    def finish(self) -> Path:
        """Record the content sha256, mark complete, write `<name>.errors.csv`, rename `.partial` -> `.h5`
        atomically and release the lock; returns the cache path."""
        handle = self._handle
        if handle is None:
            raise RuntimeError("finish() on a closed CacheWriter")
        if self.n_done != self.n_total:
            raise RuntimeError(f"finish() after {self.n_done} of {self.n_total} rows")
        try:
            failed = np.flatnonzero(~handle["ok"][:].astype(bool))
            ids = handle["ids"].asstr()
            self.failures = _journal_failures(self.journal, failed, lambda row: str(ids[row]))
            if "errors" in handle:  # replaced whole: an earlier finish may have died while writing it
                del handle["errors"]
            lines = [f"{path}\t{reason}" for path, reason in self.failures]
            _create_text(handle, "errors", lines)
            handle.attrs["content_sha256"] = content_sha256(handle)
            handle.attrs.modify("complete", np.bool_(True))
            handle.flush()
            self._handle = None
            handle.close()
            with open(self.partial, "rb+") as raw:
                os.fsync(raw.fileno())
            write_errors_csv(self.path, self.failures)
        except (_UnreadableDataset, *_WRITE_ERRORS) as error:
            raise _write_error(self.partial, error) from None
        os.replace(self.partial, self.path)
        self.journal.unlink(missing_ok=True)
        self._lock.release()
        return self.path

    def close(self) -> None:
        """Release the lock and leave the `.partial` for a resume (removed when it holds no rows yet).

        Every row before n_done is already flushed, so a close that fails (a full disk) loses nothing.
        """
        handle, self._handle = self._handle, None
        try:
            if handle is not None:
                with suppress(*_WRITE_ERRORS):
                    handle.close()
                if self.n_done == 0 and self._created:
                    self.partial.unlink(missing_ok=True)
                    self.journal.unlink(missing_ok=True)
        finally:
            self._lock.release()


def _journal_failures(journal: Path, failed_rows: np.ndarray, path_of) -> list[tuple[str, str]]:
    """(path, reason) of each failed row, in row order, from the journal's last line for that row.

    Lines for rows that did not fail (a batch written again after a kill) are left out; a torn last line
    from a kill or a full disk belongs to such a batch. A failed row without a line (the journal was
    deleted) still gets one.
    """
    reasons: dict[int, tuple[str, str]] = {}
    try:
        with open(journal, newline="", encoding="utf-8") as handle:
            for line in csv.reader(handle):
                if len(line) == 3 and line[0].isdigit():
                    reasons[int(line[0])] = (line[1], line[2])
    except FileNotFoundError:
        pass
    return [
        reasons.get(int(row)) or (path_of(row), "reason lost (its failures journal was removed)") for row in failed_rows
    ]


def _failure(line: str) -> tuple[str, str]:
    path, _, reason = line.partition("\t")
    return path, reason


def write_errors_csv(path, failures: Sequence[tuple[str, str]]) -> Path | None:
    """Write `<name>.errors.csv` (columns path, reason) beside the cache; remove an old one when nothing failed."""
    target = errors_csv_path(path)
    if not failures:
        target.unlink(missing_ok=True)
        return None
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    atomic_write(target, lambda f: f.write(text.getvalue().encode("utf-8")))
    return target


# Keys that say which images a cache holds: when one of them differs, --force would throw away another
# dataset's embeddings, so the advice is another --out, never --force.
DATA_KEYS = ("manifest_sha256", "data_root", "rows")
# Answers whether the files under the requested data root are the cached ones: (ids, sha256, ok) -> bool.
FilesMatch = Callable[[np.ndarray, np.ndarray, np.ndarray], bool]


def check_cache(path, attrs: dict, n_rows: int, force: bool = False, files_match: FilesMatch | None = None) -> bool:
    """True when a complete, undamaged cache at `path` answers the request (a hit); no lock, no model.

    Reads the whole file once: every chunk passes its fletcher32 checksum and the content sha256 matches.
    StaleCacheError when its attributes differ; CacheError when it is unreadable, foreign, of another
    format, incomplete or damaged (each naming the command that fixes it). With force, any existing file
    is a miss.

    When the data root is the only difference (the data folder moved) and `files_match(ids, sha256, ok)`
    says the files under the requested root have the cached bytes, the cache is a hit as it is: nothing
    in it changes, so neither does its content sha256 nor the identity of the runs fitted on it.
    """
    path = Path(path)
    attrs = {"format": FORMAT, **attrs}
    if force or not path.exists():
        return False
    handle, cached = _open_cache(path, request=attrs)
    with handle, _reading(path, cached):
        n_cached = handle["ids"].shape[0]
        _check_finished(handle, path, cached)
        differ = differing_keys(cached, attrs, n_cached, n_rows)
        if differ == ["data_root"] and files_match is not None:
            rows = _read_rows(handle, path, cached)
            if files_match(rows.ids, rows.image_sha256, rows.ok):
                differ = []
        if differ:
            raise StaleCacheError(_stale_message(path, cached, attrs, differ, n_cached, n_rows))
        _verify_content(handle, path, cached)
    return True


def _stale_message(path: Path, cached: dict, wanted: dict, differ: list[str], n_cached: int, n_wanted: int) -> str:
    """Why a cache does not answer a request, and the fix that loses nothing."""
    details = ", ".join(
        f"{key}: cached {_shown(cached, key, n_cached)} vs requested {_shown(wanted, key, n_wanted)}" for key in differ
    )
    manifest = str(cached.get("manifest_sha256") or "")[:8] or "unknown"
    built = str(cached.get("created_utc") or "").replace("T", " ")[:16]
    what = f"a cache of {n_cached} rows from manifest {manifest}… under {str(cached.get('data_root') or '?')!r}"
    what += f", built {built} UTC" if built else ""
    if set(differ) & set(DATA_KEYS):
        return (
            f"The embedding cache {str(path)!r} holds other images than requested ({details}); to keep it, pass "
            f"--out another folder for these images (--force would delete it: {what})."
        )
    return (
        f"The embedding cache {str(path)!r} was made with different settings ({details}); pass --out another "
        f"folder to keep both, or --force to replace it ({what})."
    )


def _shown(attrs: dict, key: str, n_rows: int) -> str:
    if key == "rows":
        return str(n_rows)
    value = _plain(attrs.get(key))
    text = repr(value)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


def _estimated_bytes(n_rows: int, widths: dict[str, int], labels: np.ndarray, strings: Iterable[Sequence[str]]) -> int:
    """About how many bytes a finished cache takes: its preallocated rows, its text columns (fixed-length: the
    longest value each) and a margin."""
    label_bytes = int(np.prod(labels.shape[1:], dtype=np.int64)) if labels.ndim > 1 else 1
    per_row = 4 * sum(int(width) for width in widths.values()) + 1 + SHA256_DTYPE.itemsize + label_bytes
    text = sum(len(column) * max([len(str(value).encode("utf-8")) for value in column] + [1]) for column in strings)
    return n_rows * per_row + text + SPACE_MARGIN


def _allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except (FileNotFoundError, AttributeError):
        return 0


def _size_text(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _check_free_space(path: Path, needed: int) -> None:
    """CacheError before any HDF5 write when the folder cannot take the rest of the cache."""
    stats = os.statvfs(path.parent)
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise CacheError(
            f"Not enough free space for {str(path)!r}: it needs about {_size_text(needed)} more and "
            f"'{path.parent}' has {_size_text(free)} free; free space (or pass --out another disk) "
            "and run the command again."
        )


def open_writer(
    path,
    *,
    attrs: dict,
    ids: Sequence[str],
    labels: np.ndarray,
    classes: Sequence[str],
    split: Sequence[str],
    patient_id: Sequence[str],
    widths: dict[str, int],
    meta: Mapping[str, Sequence[str]] | None = None,
    force: bool = False,
    batch_rows: int = 256,
) -> CacheWriter | None:
    """Open the cache at `path` for writing, or return None when a complete matching cache is there (a hit).

    `meta` (manifest metadata column -> one string per row) goes to /meta/<column>.
    With force a complete cache is ignored (and replaced on finish). Resumes a
    `.partial` whose attributes and rows match, and whose rows so far pass their
    checksums, from its n_done; starts over (saying why in `writer.note`) otherwise.
    Checks the free space before writing. Raises StaleCacheError / CacheError /
    LockError as described in check_cache and acquire_lock.
    """
    path = Path(path)
    n_rows = len(ids)
    if n_rows == 0:
        raise CacheError(f"Nothing to write to {str(path)!r}: the manifest has no rows.")
    attrs = {**attrs, "format": FORMAT, "poolings": list(widths)}
    if check_cache(path, attrs, n_rows, force=force):
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheError(f"Cannot create the output directory '{path.parent}': {error.strerror or error}.") from None
    labels = np.asarray(labels, dtype=np.int8)
    needed = _estimated_bytes(n_rows, widths, labels, (ids, split, patient_id, *(meta or {}).values()))
    lock = acquire_lock(path)
    partial = partial_path(path)
    try:
        note = None
        if partial.exists():
            # --force overrides a complete cache; a matching unfinished one is still resumed (same result).
            handle, note = _try_resume(partial, attrs, n_rows)
            if handle is not None:
                try:
                    _check_free_space(path, needed - _allocated_bytes(partial))
                except BaseException:
                    handle.close()
                    raise
                return CacheWriter(path, handle, lock, n_rows, created=False, note=note)
        _check_free_space(path, needed - _allocated_bytes(partial))
        handle = _create(partial, attrs, ids, labels, classes, split, patient_id, widths, batch_rows, meta or {})
        return CacheWriter(path, handle, lock, n_rows, created=True, note=note)
    except _WRITE_ERRORS as error:
        lock.release()
        if _no_space(error):
            raise _write_error(partial, error) from None
        raise
    except BaseException:
        lock.release()
        raise


def _try_resume(partial: Path, attrs: dict, n_rows: int) -> tuple[h5py.File | None, str | None]:
    try:
        handle, cached = _open_cache(partial)
        with handle:
            n_cached = handle["ids"].shape[0]
            cached_poolings = list(handle["embeddings"].keys())
            n_done = int(cached["n_done"])
            _verify_rows(handle, n_done)
    except (CacheError, *_READ_ERRORS):
        return None, f"The unfinished {partial.name} is unreadable or damaged; starting over."
    differ = differing_keys(cached, attrs, n_cached, n_rows)
    if sorted(cached_poolings) != sorted(attrs["poolings"]) and "poolings" not in differ:
        differ.append("poolings")
    if differ:
        return (
            None,
            f"The unfinished {partial.name} was made with different settings ({', '.join(differ)}); starting over.",
        )
    try:
        handle = _open_for_writing(partial, "r+")
    except OSError:
        return None, f"The unfinished {partial.name} cannot be opened for writing; starting over."
    return handle, f"Resuming {partial.name} at row {n_done} of {n_rows}."


def _verify_rows(handle: h5py.File, n_done: int) -> None:
    """Read the rows written so far, so HDF5 checks their chunks' checksums (a torn write fails here)."""
    datasets = [handle["ok"], handle["sha256"], *handle["embeddings"].values()]
    for dataset in datasets:
        for rows in _row_blocks(dataset, stop=min(n_done, dataset.shape[0])):
            dataset[rows]


def _create(partial, attrs, ids, labels, classes, split, patient_id, widths, batch_rows, meta) -> h5py.File:
    n_rows = len(ids)
    if labels.shape[0] != n_rows or len(split) != n_rows or len(patient_id) != n_rows:
        raise ValueError("ids, labels, split and patient_id must have one entry per row")
    if any(len(values) != n_rows for values in meta.values()):
        raise ValueError("every metadata column must have one entry per row")
    failures_journal_path(partial).unlink(missing_ok=True)  # a journal left by a run that is not resumed
    try:
        handle = _open_for_writing(partial, "w")
    except OSError as error:
        if _no_space(error):
            raise _write_error(partial, error) from None
        raise CacheError(f"Cannot write {str(partial)!r}: {short_reason(error, 160)}.") from None
    try:
        for key, value in attrs.items():
            handle.attrs[key] = _h5_value(value)
        handle.attrs["format"] = np.int64(FORMAT)
        handle.attrs["complete"] = np.bool_(False)
        handle.attrs["n_done"] = np.int64(0)
        _create_text(handle, "ids", ids)
        handle.create_dataset("labels", data=labels, fletcher32=True)
        handle["labels"].attrs["classes"] = _text(classes)
        _create_text(handle, "split", split)
        _create_text(handle, "patient_id", patient_id)
        if meta:  # optional: readers without it never look for /meta
            group = handle.create_group(META_GROUP)
            for name, values in meta.items():
                _create_text(group, name, [str(v) for v in values])
            group.attrs["columns"] = _text(list(meta))  # the manifest's column order
        _create_preallocated(handle, "ok", (n_rows,), np.bool_, min(n_rows, 65536))
        _create_preallocated(
            handle, "sha256", (n_rows,), SHA256_DTYPE, _chunk_rows(SHA256_DTYPE.itemsize, batch_rows, n_rows)
        )
        _create_text(handle, "errors", [])  # written by finish(), from the failures journal
        group = handle.create_group("embeddings")
        for pooling, width in widths.items():
            _create_preallocated(
                group, pooling, (n_rows, int(width)), np.float32, _chunk_rows(4 * int(width), batch_rows, n_rows)
            )
        handle.flush()
    except BaseException:
        with suppress(*_WRITE_ERRORS):
            handle.close()
        partial.unlink(missing_ok=True)
        raise
    return handle


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class CacheHeader:
    """What planning needs from a cache: its attributes, cached poolings and row count (no row data)."""

    path: Path
    attrs: dict
    poolings: tuple[str, ...]
    n_rows: int

    @property
    def backbone(self) -> str:
        return str(self.attrs.get("backbone") or self.path.stem)


@dataclass(frozen=True, eq=False)
class CacheRows:
    """The per-row metadata of a complete cache: everything but the embeddings."""

    path: Path
    attrs: dict
    y: np.ndarray
    classes: tuple[str, ...]
    ids: np.ndarray
    split: np.ndarray
    patient_id: np.ndarray
    ok: np.ndarray
    errors: tuple[str, ...]
    image_sha256: np.ndarray  # (N,) hex sha256 of each row's image file ("" where it could not be read)
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # manifest metadata column -> (N,) str

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(manifest path, reason) of every image that could not be read, in row order."""
        return [_failure(line) for line in self.errors]


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """One pooling of a complete cache: what stage two reads."""

    path: Path
    sha256: str  # of the cache file
    pooling: str
    attrs: dict
    X: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    multilabel: bool
    ids: np.ndarray
    split: np.ndarray
    patient_id: np.ndarray
    ok: np.ndarray
    errors: tuple[str, ...] = ()
    image_sha256: np.ndarray | None = None  # (N,) hex sha256 of each row's image file, as in CacheRows
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # manifest metadata column -> (N,) str

    @property
    def backbone(self) -> str:
        return str(self.attrs["backbone"])

    @property
    def random_weights(self) -> bool:
        return self.attrs.get("weights") == "random"

    @property
    def poolings(self) -> tuple[str, ...]:
        return tuple(self.attrs.get("poolings", ()))

    def __len__(self) -> int:
        return int(self.X.shape[0])


def _open_complete(path, verify: bool = False) -> tuple[h5py.File, dict]:
    """Open a finished cache read-only; CacheError for a .partial, missing, unreadable, foreign, other-format,
    incomplete or damaged file. verify: also read every chunk and compare the content sha256."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise CacheError(
            f"{str(path)!r} is an unfinished extraction; finish it with `{extract_command(path, force=False)}` "
            "(it resumes)."
        )
    if not path.is_file():
        partial = partial_path(path)
        hint = (
            f" (an unfinished {partial.name} is there; finish it with `{extract_command(path, force=False)}`)"
            if partial.exists()
            else ""
        )
        raise CacheError(f"No embedding cache at {str(path)!r}{hint}.")
    handle, attrs = _open_cache(path)
    try:
        with _reading(path, attrs):
            _check_finished(handle, path, attrs)
            if verify:
                _verify_content(handle, path, attrs)
    except BaseException:
        handle.close()
        raise
    return handle, attrs


def read_header(path, verify: bool = False) -> CacheHeader:
    """Attributes, cached poolings and row count of a complete cache, without reading any rows.

    Parameters
    ----------
    path : path-like
        A `<backbone>.h5` cache.
    verify : bool
        Also read the whole file: every chunk's checksum and the content sha256 recorded at finish.

    Returns
    -------
    CacheHeader

    Raises
    ------
    CacheError
        For a .partial, missing, unreadable, foreign, other-format, incomplete or damaged file (the
        sentence names the command that fixes it).
    """
    handle, attrs = _open_complete(path, verify=verify)
    with handle:
        return CacheHeader(
            path=Path(path),
            attrs=attrs,
            poolings=tuple(handle["embeddings"].keys()),
            n_rows=int(handle["ids"].shape[0]),
        )


def _read_rows(handle: h5py.File, path: Path, attrs: dict) -> CacheRows:
    labels = handle["labels"]
    return CacheRows(
        path=path,
        attrs=attrs,
        y=labels[:],
        classes=tuple(_plain(labels.attrs["classes"])),
        ids=np.asarray(handle["ids"].asstr()[:], dtype=object),
        split=np.asarray(handle["split"].asstr()[:], dtype=object),
        patient_id=np.asarray(handle["patient_id"].asstr()[:], dtype=object),
        ok=handle["ok"][:].astype(bool),
        errors=tuple(handle["errors"].asstr()[:]),
        image_sha256=np.asarray(np.char.decode(handle["sha256"][:], "ascii"), dtype=object),
        meta=_read_meta(handle),
    )


def _read_meta(handle: h5py.File) -> dict[str, np.ndarray]:
    if META_GROUP not in handle:
        return {}
    group = handle[META_GROUP]
    names = [str(name) for name in _plain(group.attrs.get("columns", list(group.keys())))]
    return {name: np.asarray(group[name].asstr()[:], dtype=object) for name in names if name in group}


def read_rows(path) -> CacheRows:
    """Labels, classes, ids, splits, patient ids, ok flags, errors and image sha256s of a complete cache
    (no embeddings).

    Parameters
    ----------
    path : path-like
        A `<backbone>.h5` cache.

    Returns
    -------
    CacheRows

    Raises
    ------
    CacheError
        As for read_header.
    """
    path = Path(path)
    handle, attrs = _open_complete(path)
    with handle, _reading(path, attrs):
        return _read_rows(handle, path, attrs)


def count_nonfinite(path, pooling: str) -> tuple[int, int]:
    """(NaN or infinite values, rows holding one) in one pooling of a complete cache, read chunk by chunk.

    Memory stays at one chunk whatever the cache's size, so stage two can check every cache before its first fit.
    """
    path = Path(path)
    handle, attrs = _open_complete(path)
    with handle, _reading(path, attrs):
        dataset = handle["embeddings"][pooling]
        step = max(1, dataset.chunks[0] if dataset.chunks else 4096)
        values = rows = 0
        for start in range(0, dataset.shape[0], step):
            finite = np.isfinite(dataset[start : start + step])
            values += int(finite.size - np.count_nonzero(finite))
            rows += int(np.count_nonzero(~finite.all(axis=1)))
    return values, rows


def load(path, pooling: str = "avg", sha256: str | None = None) -> FeatureSet:
    """Read one pooling of a complete cache with its row metadata.

    Parameters
    ----------
    path : path-like
        A `<backbone>.h5` cache.
    pooling : str
        One of the poolings the cache holds.
    sha256 : str, optional
        The file's sha256 when the caller has already hashed it (each cache is hashed once per command);
        computed here otherwise.

    Returns
    -------
    FeatureSet
        X is the (N, D) float32 embedding matrix of `pooling`, in manifest order.

    Raises
    ------
    CacheError
        As for read_header (every chunk read here is checked against its checksum), or a pooling the
        cache lacks.
    """
    path = Path(path)
    handle, attrs = _open_complete(path)
    with handle, _reading(path, attrs):
        cached = list(handle["embeddings"].keys())
        if pooling not in cached:
            raise CacheError(f"{one_of_message('pooling', pooling, cached)[:-1]} (the poolings cached in {path.name}).")
        X = handle["embeddings"][pooling][:]
        rows = _read_rows(handle, path, attrs)
    return FeatureSet(
        path=path,
        sha256=sha256 or file_sha256(path),
        pooling=pooling,
        attrs=rows.attrs,
        X=X,
        y=rows.y,
        classes=rows.classes,
        multilabel=rows.multilabel,
        ids=rows.ids,
        split=rows.split,
        patient_id=rows.patient_id,
        ok=rows.ok,
        errors=rows.errors,
        image_sha256=rows.image_sha256,
        meta=rows.meta,
    )


def list_caches(features_dir) -> list[Path]:
    """The complete format-2 `*.h5` caches in a folder, sorted by name (from their attributes; unreadable,
    unfinished or other-format files are left out)."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        return []
    found = []
    for candidate in sorted(features_dir.glob(f"*{SUFFIX}")):
        attrs = _peek_attrs(candidate)
        if attrs.get("format") == FORMAT and attrs.get("complete") is True:
            found.append(candidate)
    return found
