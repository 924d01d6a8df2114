"""Stage one with the `tiny` backbone and random weights: the ExtractConfig and the `featx extract` arguments tests share,
and the progress of a cache another process is writing.

The config and the arguments read the manifest's paths relative to its own folder unless given another data root.
"""

from __future__ import annotations

from pathlib import Path

import h5py

from featx.extract.stage import ExtractConfig


def tiny_config(manifest: Path, out: Path, **settings) -> ExtractConfig:
    """ExtractConfig of the tiny backbone writing to `out`; `settings` override or add ExtractConfig fields."""
    defaults = dict(backbones=("tiny",), manifest=manifest, data_root=manifest.parent, out_dir=out, weights="random")
    return ExtractConfig(**{**defaults, **settings})


def tiny_args(manifest, out, *extra: str, data_root=None, weights: str = "random") -> list[str]:
    """`featx extract` arguments (main's argv) of the tiny backbone writing to `out`, then `extra`."""
    return [
        "extract",
        "--backbone",
        "tiny",
        "--manifest",
        str(manifest),
        "--data-root",
        str(data_root if data_root is not None else Path(manifest).parent),
        "--out",
        str(out),
        "--weights",
        weights,
        *extra,
    ]


def n_done_of(partial: Path) -> int | None:
    """n_done of a .partial another process is writing (read without HDF5's file lock), None if unreadable yet."""
    try:
        with h5py.File(partial, "r", locking=False) as handle:
            return int(handle.attrs["n_done"])
    except (OSError, KeyError):
        return None
