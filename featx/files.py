"""Filesystem helpers every stage shares: the one sha256, atomic writes, writable folders, visible files."""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from featx.errors import FeatxError

# Never data: macOS archive debris and hidden files (dot-files, .DS_Store, editor swap files).
IGNORED_NAMES = ("__MACOSX",)


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_reason(path) -> str:
    """Why `path` is not a file that can be opened: symlink loop, broken symlink, permission, not found, not a file."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself)"
        if path.is_symlink():
            return f"broken symlink (it points to '{os.readlink(path)}', which does not exist)"
        if error.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        return "file not found" if error.errno == errno.ENOENT else (error.strerror or type(error).__name__)
    return "not a regular file"


def bytes_sha256(data: bytes) -> str:
    """sha256 of bytes already in memory (an image file as its decoder reads it); the same digest as file_sha256."""
    return hashlib.sha256(data).hexdigest()


def is_ignored(name: str) -> bool:
    """True for a file or folder name that is never data (hidden, or archive debris such as __MACOSX)."""
    return name.startswith(".") or name in IGNORED_NAMES


def walk_files(folder: Path) -> Iterator[Path]:
    """Every visible file under folder, recursively, in sorted order (ignored names and their folders skipped)."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_ignored(d))
        for name in sorted(files):
            if not is_ignored(name):
                yield Path(current) / name


def _create_temp(folder: Path, prefix: str) -> tuple[int, str]:
    """A new file in folder opened for writing, mode 0o666 less the umask (what open() would give it).

    tempfile.mkstemp creates its files 0600 whatever the umask, and os.replace keeps that mode, so
    results written through it could not be read by the group a umask of 022 or 027 lets in.
    The kernel applies the umask to the mode given here: no process-wide os.umask() call, safe in threads.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temp = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}")
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(folder))


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file.

    The file gets the permissions the umask allows (0644 under umask 022, 0640 under 027), like any file
    the user's tools write, not tempfile's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = _create_temp(path.parent, f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def check_writable_dir(folder: Path, error: type[FeatxError], what: str, fix: str) -> Path:
    """Create folder if needed and prove it is writable, or raise `error` naming it, the reason and `fix`.

    `what` names the folder for the user ("output directory", "results folder"); `fix` says what to pass instead.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise error(f"The {what} '{folder}' is a file; {fix}.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".featx-write-test-"):
            pass
    except OSError as reason:
        raise error(
            f"The {what} '{folder}' is not writable ({reason.strerror or type(reason).__name__}); {fix}."
        ) from None
    return folder


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes atomically (see atomic_write)."""
    atomic_write(path, lambda f: f.write(data))
