"""Stage one with the `tiny` backbone and random weights: the ExtractConfig and the `featx extract` arguments tests share.

Both read the manifest's paths relative to its own folder unless given another data root.
"""

from __future__ import annotations

from pathlib import Path

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
