"""Start TensorFlow without its C++ start-up chatter.

TensorFlow 2.2x prints absl "before InitializeLog" lines, oneDNN and CUDA-probe
notices straight to file descriptor 2, ignoring TF_CPP_MIN_LOG_LEVEL. The CLI
imports it through here for the commands that need it, so the user's terminal
shows featx's progress and results, not that noise. If the import fails, what
TensorFlow printed is replayed before the exception propagates.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def import_tensorflow_quietly():
    """Import TensorFlow (and probe for GPUs) with fd 2 captured; return the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with captured_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf


REPLAY_CHARS = 8000  # what a failure replays of the captured output: its end, where the cause is


@contextmanager
def captured_stderr(console=None) -> Iterator[None]:
    """File descriptor 2 goes to a temporary file for the block, and is replayed on stderr if the block fails.

    C++ libraries (TensorFlow, Ray) write there directly, past Python's logging. A rich `console`
    that prints to stderr keeps printing to the real stderr meanwhile.
    """
    sys.stderr.flush()
    saved_fd = os.dup(2)
    console_file = None
    if console is not None and console.file is sys.stderr:
        console_file = console.file
        console.file = os.fdopen(os.dup(saved_fd), "w", encoding="utf-8", errors="replace")
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except Exception:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace")[-REPLAY_CHARS:])
            sys.stderr.flush()
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if console_file is not None:
                console.file.close()
                console.file = console_file


VERSION_PACKAGES = ("featx", "numpy", "scikit-learn", "xgboost", "tensorflow", "keras", "h5py")


def library_versions() -> dict[str, str | None]:
    """Python and the installed versions of the libraries that shape featx's numbers.

    Read from package metadata: importing TensorFlow just to ask would cost seconds.
    """
    import platform
    from importlib import metadata

    from featx import __version__

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSION_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if versions["featx"] is None:
        versions["featx"] = __version__
    return versions
