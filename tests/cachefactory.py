"""Write HDF5 embedding caches (format 2, docs/internals.md) directly, without stage one.

Stage-two tests need caches with a known signal, a known patient structure and
known defects (incomplete, NaN, foreign manifest); building them through a
backbone would be slow and would hide what the test is about.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np

from featx.extract import store

FORMAT = store.FORMAT


def write_cache(
    path,
    X: dict[str, np.ndarray],
    y,
    classes: Sequence[str],
    split: Sequence[str],
    patient_id: Sequence[str],
    weights: str = "random",
    backbone: str = "tiny",
    complete: bool = True,
    *,
    ids: Sequence[str] | None = None,
    ok: Sequence[bool] | None = None,
    errors: Sequence[str] = (),
    sha256: Sequence[str] | None = None,
    meta: dict[str, Sequence[str]] | None = None,
    **attrs,
) -> Path:
    """Write a format-2 cache and return its path.

    `X` maps pooling -> (N, D) array; `y` is (N,) class indices or (N, K) 0/1 for
    multi-label. `sha256`: each row's image hash (default: a distinct fake per
    row, "" for rows not ok). `meta` (column -> one string per row) goes to
    /meta/<column> as stage one writes manifest metadata. With complete=False the
    file is written as `<path>.partial` with complete=False and n_done at half the
    rows, the way an interrupted extract leaves it. Extra keyword arguments
    override or add root attributes; the content sha256 of a complete cache is
    computed after them, so the cache passes its integrity check.
    """
    path = Path(path)
    y = np.asarray(y, dtype=np.int8)
    n = len(y)
    if ids is None:
        ids = [f"img_{i:05d}.png" for i in range(n)]
    ok = np.ones(n, dtype=bool) if ok is None else np.asarray(ok, dtype=bool)
    if sha256 is None:
        sha256 = [hashlib.sha256(str(i).encode()).hexdigest() if ok[k] else "" for k, i in enumerate(ids)]
    for pooling, matrix in X.items():
        if len(matrix) != n:
            raise ValueError(f"X[{pooling!r}] has {len(matrix)} rows, y has {n}")
    root_attrs = {
        "format": FORMAT,
        "featx_version": "0.1.0",
        "backbone": backbone,
        "weights": weights,
        "weights_sha256": "0" * 64 if weights == "random" else "f" * 64,
        "weights_seed": 0 if weights == "random" else -1,
        "image_size": [32, 32],
        "resize_mode": "stretch",
        "preprocess": "none",
        "poolings": list(X),
        "manifest_sha256": "a" * 64,
        "data_root": "/data",
        "tensorflow_version": "2.21.0",
        "keras_version": "3.0.0",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": bool(complete),
        "n_done": n if complete else n // 2,
    }
    root_attrs.update(attrs)
    target = path if complete else path.with_name(path.name + ".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as f:
        for key, value in root_attrs.items():
            f.attrs[key] = value
        f.create_dataset("ids", **text(ids))
        labels = f.create_dataset("labels", data=y, fletcher32=True)
        labels.attrs["classes"] = list(classes)
        f.create_dataset("split", **text(split))
        f.create_dataset("patient_id", **text(patient_id))
        f.create_dataset("ok", data=ok, fletcher32=True)
        f.create_dataset("sha256", data=np.asarray(sha256, dtype=store.SHA256_DTYPE), fletcher32=True)
        f.create_dataset("errors", **text(errors))
        if meta:
            columns = f.create_group("meta")
            for name, values in meta.items():
                columns.create_dataset(name, **text(values))
            columns.attrs["columns"] = list(meta)
        group = f.create_group("embeddings")
        for pooling, matrix in X.items():
            matrix = np.asarray(matrix, dtype=np.float32)
            group.create_dataset(pooling, data=matrix, chunks=(min(64, max(n, 1)), matrix.shape[1]), fletcher32=True)
        if complete:
            f.attrs["content_sha256"] = store.content_sha256(f)
    return target


def text(values: Sequence[str]) -> dict:
    """create_dataset arguments for a text column as format 2 stores it: fixed-length UTF-8, checksummed chunks."""
    encoded = [str(value).encode("utf-8") for value in values]
    dtype = h5py.string_dtype("utf-8", max([len(item) for item in encoded] + [1]))
    return dict(data=np.array(encoded, dtype=dtype), maxshape=(None,), chunks=(max(1, len(encoded)),), fletcher32=True)


def signal_dataset(
    n_train_patients: int = 60,
    images_per_patient: tuple[int, int] = (2, 3),
    n_test: int = 60,
    dim: int = 16,
    separation: float = 1.5,
    n_classes: int = 2,
    multilabel: bool = False,
    val_patients: int = 0,
    seed: int = 0,
    feature_seed: int | None = None,
) -> dict:
    """Embeddings whose first coordinates carry the label, grouped by patient.

    Every image of a patient shares the patient's label and a patient offset, so
    leaking a patient across folds would inflate scores. Returns the arguments
    of write_cache except X's pooling names: {X, y, classes, split, patient_id}.
    Test rows come from their own patients (one image each). `seed` fixes the
    rows (labels, splits, patients: the manifest); `feature_seed` the embedding
    noise, so two backbones of one manifest share rows but not features.
    """
    rng = np.random.default_rng(seed)
    n_labels = n_classes
    rows_y, rows_split, rows_pid = [], [], []

    def patient_label():
        if multilabel:
            label = rng.integers(0, 2, size=n_labels)
            return label
        return int(rng.integers(0, n_classes))

    def add(pid, split, count):
        label = patient_label()
        for _ in range(count):
            rows_y.append(label)
            rows_split.append(split)
            rows_pid.append(pid)

    low, high = images_per_patient
    for p in range(n_train_patients):
        add(f"P{p:04d}", "train", int(rng.integers(low, high + 1)))
    for p in range(val_patients):
        add(f"V{p:04d}", "val", int(rng.integers(low, high + 1)))
    for t in range(n_test):
        add(f"T{t:04d}", "test", 1)

    y = np.asarray(rows_y, dtype=np.int8)
    n = len(y)
    rng = np.random.default_rng(seed + 7919 if feature_seed is None else feature_seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    patient_offset = {pid: rng.normal(scale=0.5, size=dim) for pid in sorted(set(rows_pid))}
    X += np.stack([patient_offset[pid] for pid in rows_pid]).astype(np.float32)
    if multilabel:
        X[:, :n_labels] += separation * (2 * y - 1)
    else:
        onehot = np.eye(n_classes)[y]
        X[:, :n_classes] += separation * onehot
    if multilabel:
        classes = [f"finding_{k}" for k in range(n_labels)]
    elif n_classes == 2:
        classes = ["NORMAL", "PNEUMONIA"]
    else:
        classes = [f"class_{k}" for k in range(n_classes)]
    return {"X": X, "y": y, "classes": classes, "split": rows_split, "patient_id": rows_pid}


def write_signal_cache(
    path, backbone="tiny", poolings=("avg",), weights="random", seed=0, feature_seed=None, attrs=None, **dataset_kwargs
) -> Path:
    """A complete cache with a known signal; each pooling gets its own extra noise."""
    data = signal_dataset(seed=seed, feature_seed=feature_seed, **dataset_kwargs)
    rng = np.random.default_rng((seed if feature_seed is None else feature_seed) + 1000)
    X = {}
    for i, pooling in enumerate(poolings):
        X[pooling] = data["X"] if i == 0 else data["X"] + rng.normal(scale=0.3, size=data["X"].shape)
    return write_cache(
        path,
        X,
        data["y"],
        data["classes"],
        data["split"],
        data["patient_id"],
        weights=weights,
        backbone=backbone,
        **(attrs or {}),
    )
