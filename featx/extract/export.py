"""An embedding cache as a table other tools read: a pandas DataFrame, a Parquet file (`featx export`).

The cache is read through extract/store.py (its only reader); this module only lays its rows out:
id, label, y, split, patient_id, ok, the manifest's metadata columns, then the embeddings of one pooling.
In Parquet the embeddings are one fixed-size list column of float32 (``embedding``), which pandas reads
back as one (D,) array per row, polars as an Array column and DuckDB as a FLOAT[D] column; the cache's
attributes ride along as JSON under the schema metadata key ``featx``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featx.errors import CacheError, FeatxError, one_of_message
from featx.extract import store

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("parquet",)
EMBEDDING_LAYOUTS = ("column", "wide", "none")
ROW_COLUMNS = ("id", "label", "y", "split", "patient_id", "ok")
METADATA_KEY = b"featx"


def label_names(y: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(N,) class name per row; a multi-label row joins its classes with "|" (the manifest's own notation)."""
    names = np.asarray([str(c) for c in classes], dtype=object)
    if y.ndim == 2:
        return np.asarray(["|".join(names[row.astype(bool)]) for row in y], dtype=object)
    return names[np.asarray(y, dtype=int)]


def _column_names(features: store.FeatureSet) -> dict[str, str]:
    """metadata column -> its DataFrame column: its own name unless it would collide with a row column."""
    return {name: (f"meta_{name}" if name in (*ROW_COLUMNS, "embedding") else name) for name in features.meta}


def feature_frame(features: store.FeatureSet, embeddings: str = "column") -> pd.DataFrame:
    """One row per cache row (manifest order); see the module docstring for the columns.

    Parameters
    ----------
    features : store.FeatureSet
    embeddings : {"column", "wide", "none"}
        One ``embedding`` column of (D,) float32 arrays, one ``<pooling>_<i>`` column per dimension, or none.
    """
    import pandas as pd

    if embeddings not in EMBEDDING_LAYOUTS:
        raise FeatxError(one_of_message("embeddings", embeddings, EMBEDDING_LAYOUTS))
    columns: dict[str, object] = {
        "id": np.asarray(features.ids, dtype=object),
        "label": label_names(features.y, features.classes),
        "y": list(np.asarray(features.y, dtype=np.int8)) if features.multilabel else np.asarray(features.y, np.int64),
        "split": np.asarray(features.split, dtype=object),
        "patient_id": np.asarray(features.patient_id, dtype=object),
        "ok": np.asarray(features.ok, dtype=bool),
    }
    for name, column in _column_names(features).items():
        columns[column] = np.asarray(features.meta[name], dtype=object)
    X = np.asarray(features.X, dtype=np.float32)
    frame = pd.DataFrame(columns)
    if embeddings == "column":
        frame["embedding"] = list(X)
    elif embeddings == "wide":
        wide = pd.DataFrame(X, columns=[f"{features.pooling}_{i}" for i in range(X.shape[1])])
        frame = pd.concat([frame, wide], axis=1)
    return frame


def _schema_metadata(features: store.FeatureSet) -> bytes:
    from featx.jsonvalues import jsonable

    info = {
        "pooling": features.pooling,
        "classes": list(features.classes),
        "multilabel": features.multilabel,
        "cache": features.path.name,
        "cache_sha256": features.sha256,
        "attrs": features.attrs,
    }
    return json.dumps(jsonable(info), sort_keys=True).encode()


def default_out(path, pooling: str, format: str = "parquet") -> Path:
    """<cache stem>.<pooling>.<format> beside the cache."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix(store.SUFFIX)}.{pooling}.{format}")


def export_features(path, out=None, *, format: str = "parquet", pooling: str = "avg") -> Path:
    """Write one pooling of a complete cache as `format` (Parquet); returns the file written (atomically).

    Raises
    ------
    CacheError
        As store.load (missing, damaged or unfinished cache, a pooling it lacks).
    FeatxError
        For another format, or pyarrow missing.
    """
    from featx.files import atomic_write

    if format not in FORMATS:
        raise FeatxError(one_of_message("format", format, FORMATS))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FeatxError("Writing Parquet needs pyarrow; install it with pip install 'featx[parquet]'.") from None
    features = store.load(path, pooling)
    out = default_out(path, pooling, format) if out is None else Path(out)
    frame = feature_frame(features, embeddings="none")
    width = int(features.X.shape[1])
    values = pa.array(np.ascontiguousarray(features.X, dtype=np.float32).reshape(-1))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(values, width))
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: _schema_metadata(features)})
    try:
        atomic_write(out, lambda handle: pq.write_table(table, handle))
    except OSError as error:
        raise CacheError(
            f"Cannot write '{out}' ({error.strerror or error}); pass --out a file you can write."
        ) from None
    return out


def export_command(path, out, format: str, pooling: str, console) -> None:
    """`featx export`: write the file and say where, with its shape."""
    written = export_features(path, out, format=format, pooling=pooling)
    rows = store.read_header(path)
    console.print(f"{rows.n_rows} rows of {Path(path).name} ({pooling}) -> {written}", soft_wrap=True)
