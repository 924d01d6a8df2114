"""sha256 of files: the one digest featx records for manifests, weights, images and caches."""

from __future__ import annotations

import hashlib


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
