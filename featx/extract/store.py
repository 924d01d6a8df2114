"""The HDF5 embedding cache (format 1 of DESIGN.md): layout, resumable writes, atomic finish, reading.

A writer works on `<name>.h5.partial` under a lock file `<name>.h5.lock`. Every
row dataset is allocated in full when the file is created, so a write only puts
raw numbers into place and advances the `n_done` attribute in place: no HDF5
metadata is reorganised mid-run, which keeps a killed file readable at its last
flush. `n_done` moves only after the rows before it are flushed, so a resumed run
starts there and ends bit-identical to an uninterrupted one. `finish()` marks the
file complete and renames it to `<name>.h5` with `os.replace` (atomic).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from featx.errors import CacheError, LockError, StaleCacheError, one_of_message, short_reason
from featx.files import file_sha256

FORMAT = 1
SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
META_GROUP = "meta"  # /meta/<column>: (N,) str per manifest metadata column; absent when the manifest has none

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

# Rows per HDF5 chunk are capped so one chunk stays a few MiB (flatten pooling is ~100 KiB a row).
MAX_CHUNK_BYTES = 4 * 1024 * 1024
STR = h5py.string_dtype()


def cache_path(out_dir, backbone: str) -> Path:
    """The cache file of one backbone: out_dir / "<backbone>.h5"."""
    return Path(out_dir) / f"{backbone}{SUFFIX}"


def partial_path(path) -> Path:
    return Path(f"{path}{PARTIAL_SUFFIX}")


def lock_path(path) -> Path:
    return Path(f"{path}{LOCK_SUFFIX}")


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


def _h5_value(value):
    """A Python attribute value in a form h5py stores without surprises."""
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, str) for item in value):
            return np.array(list(value), dtype=STR)
        return np.asarray(value)
    if isinstance(value, bool):
        return np.bool_(value)
    return value


def read_attrs(handle: h5py.File) -> dict:
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


def _open_cache(path: Path) -> h5py.File:
    """Open a cache read-only, or raise CacheError saying it is unreadable."""
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise CacheError(
            f"The embedding cache {str(path)!r} is unreadable (truncated or not HDF5: {short_reason(error, 160)}); "
            "delete it or pass --force to rebuild it."
        ) from None
    missing = [key for key in REQUIRED_ATTRS if key not in handle.attrs]
    if missing or "ids" not in handle or "embeddings" not in handle:
        handle.close()
        raise CacheError(
            f"The file {str(path)!r} is not a featx embedding cache (missing {missing or ['/ids or /embeddings']}); "
            "delete it or pass --force to rebuild it."
        )
    if int(_plain(handle.attrs["format"])) != FORMAT:
        found = _plain(handle.attrs["format"])
        handle.close()
        raise CacheError(
            f"The embedding cache {str(path)!r} has format {found}, this featx reads format {FORMAT}; "
            "pass --force to rebuild it."
        )
    return handle


# ---------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, OSError):
        return None
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return None


def acquire_lock(path: Path) -> Path:
    """Create `<path>.lock` holding our pid; take over a lock whose process is gone.

    LockError when a live process holds it (including this one: a second writer in
    one process is the same mistake).
    """
    lock = lock_path(path)
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pid = _read_lock_pid(lock)
            if pid is not None and _pid_alive(pid):
                raise LockError(
                    f"Another featx process (pid {pid}) is writing {str(path)!r}; wait for it to finish, "
                    f"or delete {str(lock)!r} if that process is not featx."
                ) from None
            lock.unlink(missing_ok=True)  # stale: its writer died
            continue
        except PermissionError:
            raise CacheError(
                f"Cannot create the lock file {str(lock)!r}: the output directory is not writable."
            ) from None
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        return lock
    raise LockError(f"Could not take the lock {str(lock)!r}: another process keeps re-creating it.")


def release_lock(lock: Path) -> None:
    if _read_lock_pid(lock) == os.getpid():
        lock.unlink(missing_ok=True)


# ---------------------------------------------------------------- writer


def _chunk_rows(width: int, batch_rows: int, n_rows: int) -> int:
    cap = max(1, MAX_CHUNK_BYTES // (4 * max(1, width)))
    return max(1, min(batch_rows, cap, n_rows))


def _create_preallocated(group: h5py.Group, name: str, shape: tuple, dtype, chunk_rows: int) -> h5py.Dataset:
    """A row-chunked dataset whose chunks are all allocated now and never filled (we write every row)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((chunk_rows,) + tuple(shape[1:]))
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(tuple(shape))
    tid = h5py.h5t.py_create(np.dtype(dtype), logical=True)
    dsid = h5py.h5d.create(group.id, name.encode("utf-8"), tid, space, dcpl=dcpl)
    return h5py.Dataset(dsid)


class CacheWriter:
    """Appends rows in manifest order to a `.partial` cache; a context manager holding the lock.

    `note` says what open_writer found (a resume or a restart and why), for the caller to print.
    """

    def __init__(self, path: Path, handle: h5py.File, lock: Path, n_total: int, created: bool, note: str | None):
        self.path = Path(path)
        self.partial = partial_path(path)
        self._handle = handle
        self._lock = lock
        self._created = created
        self.n_total = n_total
        self.n_done = int(_plain(handle.attrs["n_done"]))
        self.resumed_from = 0 if created else self.n_done
        self.n_failed = int(np.count_nonzero(~handle["ok"][: self.n_done].astype(bool)))
        self.note = note
        self.poolings = tuple(handle["embeddings"].keys())

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._handle is None

    def write(self, start: int, embeddings: dict[str, np.ndarray], ok: np.ndarray, errors: Iterable = ()) -> None:
        """Write rows start..start+b (b = len(ok)), then flush, then advance n_done.

        Rows whose image failed (ok False) are stored as zeros; each failure adds
        "<path>\\t<reason>" to /errors.
        """
        if self._handle is None:
            raise RuntimeError("write() on a closed CacheWriter")
        if start != self.n_done:
            raise RuntimeError(f"rows must be written in order: expected start {self.n_done}, got {start}")
        ok = np.asarray(ok, dtype=bool)
        stop = start + len(ok)
        if stop > self.n_total:
            raise RuntimeError(f"rows {start}..{stop} run past the {self.n_total} rows of the cache")
        if set(embeddings) != set(self.poolings):
            raise RuntimeError(f"expected poolings {list(self.poolings)}, got {list(embeddings)}")
        handle = self._handle
        for pooling, values in embeddings.items():
            values = np.array(values, dtype=np.float32, copy=True)
            if values.shape[0] != len(ok):
                raise RuntimeError(f"{pooling}: {values.shape[0]} rows for a batch of {len(ok)}")
            values[~ok] = 0.0
            handle["embeddings"][pooling][start:stop] = values
        handle["ok"][start:stop] = ok
        lines = [f"{path}\t{reason}" for path, reason in errors]
        if lines:
            dataset = handle["errors"]
            old = dataset.shape[0]
            dataset.resize((old + len(lines),))
            dataset[old:] = np.array(lines, dtype=object)
        handle.flush()
        handle.attrs.modify("n_done", np.int64(stop))
        handle.flush()
        self.n_done = stop
        self.n_failed += int(np.count_nonzero(~ok))

    def finish(self) -> Path:
        """Mark complete, rename `.partial` -> `.h5` atomically, release the lock; returns the cache path."""
        if self._handle is None:
            raise RuntimeError("finish() on a closed CacheWriter")
        if self.n_done != self.n_total:
            raise RuntimeError(f"finish() after {self.n_done} of {self.n_total} rows")
        self._handle.attrs.modify("complete", np.bool_(True))
        self._handle.flush()
        self._handle.close()
        self._handle = None
        with open(self.partial, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(self.partial, self.path)
        release_lock(self._lock)
        return self.path

    def close(self) -> None:
        """Release the lock and leave the `.partial` for a resume (removed when it holds no rows yet)."""
        if self._handle is not None:
            try:
                self._handle.close()
            finally:
                self._handle = None
                if self.n_done == 0 and self._created:
                    self.partial.unlink(missing_ok=True)
                release_lock(self._lock)


def check_cache(path, attrs: dict, n_rows: int, force: bool = False) -> bool:
    """True when a complete cache at `path` answers the request (a hit); no lock, no model.

    StaleCacheError when it is complete but its attributes differ; CacheError when
    it is unreadable, foreign or incomplete. With force, any existing file is a miss.
    """
    path = Path(path)
    attrs = {"format": FORMAT, **attrs}
    if force or not path.exists():
        return False
    with _open_cache(path) as handle:
        cached = read_attrs(handle)
        n_cached = handle["ids"].shape[0]
    if not cached.get("complete"):
        raise CacheError(f"The embedding cache {str(path)!r} is marked incomplete; pass --force to rebuild it.")
    differ = differing_keys(cached, attrs, n_cached, n_rows)
    if differ:
        details = ", ".join(
            f"{key}: cached {_shown(cached, key, n_cached)} vs requested {_shown(attrs, key, n_rows)}" for key in differ
        )
        raise StaleCacheError(
            f"The embedding cache {str(path)!r} was made with different settings ({details}); "
            "pass --force to rebuild it."
        )
    return True


def _shown(attrs: dict, key: str, n_rows: int) -> str:
    if key == "rows":
        return str(n_rows)
    value = _plain(attrs.get(key))
    text = repr(value)
    return text if len(text) <= 40 else text[:18] + "..." + text[-18:]


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
    `.partial` whose attributes and rows match from its n_done; starts over
    (saying why in `writer.note`) when they differ or it is unreadable. Raises
    StaleCacheError / CacheError / LockError as described in check_cache and acquire_lock.
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
    lock = acquire_lock(path)
    try:
        partial = partial_path(path)
        note = None
        if partial.exists():
            # --force overrides a complete cache; a matching unfinished one is still resumed (same result).
            handle, note = _try_resume(partial, attrs, n_rows)
            if handle is not None:
                return CacheWriter(path, handle, lock, n_rows, created=False, note=note)
        handle = _create(partial, attrs, ids, labels, classes, split, patient_id, widths, batch_rows, meta or {})
        return CacheWriter(path, handle, lock, n_rows, created=True, note=note)
    except BaseException:
        release_lock(lock)
        raise


def _try_resume(partial: Path, attrs: dict, n_rows: int) -> tuple[h5py.File | None, str | None]:
    try:
        with _open_cache(partial) as handle:
            cached = read_attrs(handle)
            n_cached = handle["ids"].shape[0]
            cached_poolings = list(handle["embeddings"].keys())
    except CacheError:
        return None, f"The unfinished {partial.name} is unreadable; starting over."
    differ = differing_keys(cached, attrs, n_cached, n_rows)
    if sorted(cached_poolings) != sorted(attrs["poolings"]) and "poolings" not in differ:
        differ.append("poolings")
    if differ:
        return (
            None,
            f"The unfinished {partial.name} was made with different settings ({', '.join(differ)}); starting over.",
        )
    try:
        handle = h5py.File(partial, "r+")
    except OSError:
        return None, f"The unfinished {partial.name} cannot be opened for writing; starting over."
    _drop_errors_after(handle, int(_plain(handle.attrs["n_done"])))
    n_done = int(_plain(handle.attrs["n_done"]))
    return handle, f"Resuming {partial.name} at row {n_done} of {n_rows}."


def _drop_errors_after(handle: h5py.File, n_done: int) -> None:
    """Keep only /errors lines for rows before n_done (a kill can land between the two flushes of write())."""
    dataset = handle["errors"]
    if dataset.shape[0] == 0:
        return
    ids = handle["ids"].asstr()[:n_done]
    ok = handle["ok"][:n_done]
    failed = {ids[i] for i in np.flatnonzero(~ok)}
    lines = dataset.asstr()[:]
    keep = [line for line in lines if line.split("\t", 1)[0] in failed]
    if len(keep) != len(lines):
        dataset.resize((len(keep),))
        if keep:
            dataset[:] = np.array(keep, dtype=object)
        handle.flush()


def _create(partial, attrs, ids, labels, classes, split, patient_id, widths, batch_rows, meta) -> h5py.File:
    n_rows = len(ids)
    labels = np.asarray(labels, dtype=np.int8)
    if labels.shape[0] != n_rows or len(split) != n_rows or len(patient_id) != n_rows:
        raise ValueError("ids, labels, split and patient_id must have one entry per row")
    if any(len(values) != n_rows for values in meta.values()):
        raise ValueError("every metadata column must have one entry per row")
    try:
        handle = h5py.File(partial, "w")
    except OSError as error:
        raise CacheError(f"Cannot write {str(partial)!r}: {short_reason(error, 160)}.") from None
    try:
        for key, value in attrs.items():
            handle.attrs[key] = _h5_value(value)
        handle.attrs["format"] = np.int64(FORMAT)
        handle.attrs["complete"] = np.bool_(False)
        handle.attrs["n_done"] = np.int64(0)
        handle.create_dataset("ids", data=np.array(list(ids), dtype=object), dtype=STR)
        handle.create_dataset("labels", data=labels)
        handle["labels"].attrs["classes"] = np.array(list(classes), dtype=STR)
        handle.create_dataset("split", data=np.array(list(split), dtype=object), dtype=STR)
        handle.create_dataset("patient_id", data=np.array(list(patient_id), dtype=object), dtype=STR)
        if meta:  # optional: readers without it never look for /meta
            group = handle.create_group(META_GROUP)
            for name, values in meta.items():
                group.create_dataset(name, data=np.array([str(v) for v in values], dtype=object), dtype=STR)
            group.attrs["columns"] = np.array(list(meta), dtype=STR)  # the manifest's column order
        _create_preallocated(handle, "ok", (n_rows,), np.bool_, min(n_rows, 65536))
        handle.create_dataset("errors", shape=(0,), maxshape=(None,), dtype=STR, chunks=(256,))
        group = handle.create_group("embeddings")
        for pooling, width in widths.items():
            _create_preallocated(
                group, pooling, (n_rows, int(width)), np.float32, _chunk_rows(int(width), batch_rows, n_rows)
            )
        handle.flush()
    except BaseException:
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
    meta: dict[str, np.ndarray] = field(default_factory=dict)  # manifest metadata column -> (N,) str

    @property
    def multilabel(self) -> bool:
        return self.y.ndim == 2


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """One pooling of a complete cache: what stage two reads."""

    path: Path
    sha256: str
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


def _open_complete(path) -> h5py.File:
    """Open a complete cache read-only; CacheError for a .partial, missing, incomplete, truncated or foreign file."""
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise CacheError(
            f"{str(path)!r} is an unfinished extraction; run featx extract again to resume and complete it."
        )
    if not path.is_file():
        hint = (
            " (an unfinished .partial is there; run featx extract again to complete it)"
            if partial_path(path).exists()
            else ""
        )
        raise CacheError(f"No embedding cache at {str(path)!r}{hint}.")
    handle = _open_cache(path)
    attrs = read_attrs(handle)
    if not attrs.get("complete") or int(attrs.get("n_done", -1)) != handle["ids"].shape[0]:
        n_rows = handle["ids"].shape[0]
        handle.close()
        raise CacheError(
            f"The embedding cache {str(path)!r} is incomplete ({attrs.get('n_done')} of "
            f"{n_rows} rows); run featx extract again to complete it."
        )
    return handle


def read_header(path) -> CacheHeader:
    """Attributes, cached poolings and row count of a complete cache, without reading any rows.

    Parameters
    ----------
    path : path-like
        A `<backbone>.h5` cache.

    Returns
    -------
    CacheHeader

    Raises
    ------
    CacheError
        For a .partial, missing, incomplete, truncated or foreign file (the sentence says how to fix it).
    """
    with _open_complete(path) as handle:
        return CacheHeader(
            path=Path(path),
            attrs=read_attrs(handle),
            poolings=tuple(handle["embeddings"].keys()),
            n_rows=int(handle["ids"].shape[0]),
        )


def _read_rows(handle: h5py.File, path: Path) -> CacheRows:
    labels = handle["labels"]
    return CacheRows(
        path=path,
        attrs=read_attrs(handle),
        y=labels[:],
        classes=tuple(_plain(labels.attrs["classes"])),
        ids=np.asarray(handle["ids"].asstr()[:], dtype=object),
        split=np.asarray(handle["split"].asstr()[:], dtype=object),
        patient_id=np.asarray(handle["patient_id"].asstr()[:], dtype=object),
        ok=handle["ok"][:].astype(bool),
        errors=tuple(handle["errors"].asstr()[:]),
        meta=_read_meta(handle),
    )


def _read_meta(handle: h5py.File) -> dict[str, np.ndarray]:
    if META_GROUP not in handle:
        return {}
    group = handle[META_GROUP]
    names = [str(name) for name in _plain(group.attrs.get("columns", list(group.keys())))]
    return {name: np.asarray(group[name].asstr()[:], dtype=object) for name in names if name in group}


def read_rows(path) -> CacheRows:
    """Labels, classes, ids, splits, patient ids, ok flags and errors of a complete cache (no embeddings).

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
    with _open_complete(path) as handle:
        return _read_rows(handle, Path(path))


def count_failures(path) -> int:
    """How many rows of a complete cache hold an image that could not be read (ok False)."""
    with _open_complete(path) as handle:
        return int(np.count_nonzero(~handle["ok"][:].astype(bool)))


def count_nonfinite(path, pooling: str) -> tuple[int, int]:
    """(NaN or infinite values, rows holding one) in one pooling of a complete cache, read chunk by chunk.

    Memory stays at one chunk whatever the cache's size, so stage two can check every cache before its first fit.
    """
    with _open_complete(path) as handle:
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
        For a .partial, missing, incomplete, truncated or foreign file, or a pooling the cache lacks.
    """
    path = Path(path)
    with _open_complete(path) as handle:
        cached = list(handle["embeddings"].keys())
        if pooling not in cached:
            raise CacheError(f"{one_of_message('pooling', pooling, cached)[:-1]} (the poolings cached in {path.name}).")
        X = handle["embeddings"][pooling][:]
        rows = _read_rows(handle, path)
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
        meta=rows.meta,
    )


def list_caches(features_dir) -> list[Path]:
    """The complete `*.h5` caches in a folder, sorted by name (unreadable or unfinished ones are left out)."""
    features_dir = Path(features_dir)
    if not features_dir.is_dir():
        return []
    found = []
    for candidate in sorted(features_dir.glob(f"*{SUFFIX}")):
        try:
            with h5py.File(candidate, "r") as handle:
                if _plain(handle.attrs.get("format")) == FORMAT and bool(_plain(handle.attrs.get("complete", False))):
                    found.append(candidate)
        except (OSError, ValueError):
            continue
    return found
