"""Data roots: a local folder, or a folder in any fsspec filesystem (file://, s3://, gs://, memory:// ...).

A cluster keeps its images where every node can read them: a shared folder (a local
path that exists on every node) or an object store. A data root given as a URL is opened
with fsspec; the manifest's relative paths resolve against it with the same lexical rule as
local ones, and the images are read through that filesystem by whichever process decodes
them (the fsspec filesystem object pickles to Ray's actors and reconnects there).
Object stores need their fsspec package (s3fs for s3://, gcsfs for gs://) and credentials
on every node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featx.data.manifest import resolve_path
from featx.errors import FeatxError, ManifestError, short_reason

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(data_root) -> bool:
    """True for "scheme://..." (a data root fsspec opens); False for a local path."""
    return isinstance(data_root, str) and bool(_URL.match(data_root))


@dataclass(frozen=True)
class DataRoot:
    """Where the manifest's paths live: `filesystem` None means local files (pathlib, as always)."""

    text: str  # recorded as the cache's data_root: the resolved local folder, or the URL as given
    root: Any  # a Path, or the root's path inside `filesystem`
    filesystem: Any = None  # an fsspec AbstractFileSystem, or None

    def is_dir(self) -> bool:
        if self.filesystem is None:
            return Path(self.root).is_dir()
        try:
            return bool(self.filesystem.isdir(self.root))
        except OSError:
            return False

    def resolve(self, rel_path):
        """The row's path: a Path inside a local root, else a path string inside the filesystem."""
        path = resolve_path(self.root, rel_path)  # ManifestError when rel_path escapes the root
        return path if self.filesystem is None else path.as_posix()

    def exists(self, path) -> bool:
        if self.filesystem is None:
            return Path(path).exists()
        try:
            return bool(self.filesystem.exists(path))
        except OSError:
            return False

    @property
    def decode_options(self) -> dict:
        """What featx.data.images.iter_batches needs to read the rows."""
        return {} if self.filesystem is None else {"filesystem": self.filesystem}


def open_data_root(data_root) -> DataRoot:
    """A local folder as it always was, or a URL opened with fsspec (FeatxError when that cannot be done)."""
    if not is_url(data_root):
        return DataRoot(text=str(Path(data_root).resolve()), root=Path(data_root))
    try:
        import fsspec
    except ImportError:
        raise FeatxError(
            f"The data root {data_root!r} is a URL, which needs fsspec; install it with pip install 'featx[ray]'."
        ) from None
    try:
        filesystem, root = fsspec.core.url_to_fs(data_root)
    except (ImportError, ValueError, OSError) as error:
        raise ManifestError(
            f"Cannot open the data root {data_root!r} ({short_reason(error, 160)}); an s3:// root needs s3fs, "
            "a gs:// root gcsfs, and credentials for them."
        ) from None
    return DataRoot(text=data_root.rstrip("/"), root=root.rstrip("/") or root, filesystem=filesystem)
