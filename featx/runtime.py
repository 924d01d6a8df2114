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

from featx.config import usable_cores


def import_tensorflow_quietly():
    """Import TensorFlow (and probe for GPUs) with fd 2 captured; return the module."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")
        except BaseException:
            os.dup2(saved_fd, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
    return tf


def limit_tensorflow_threads(threads: int) -> int:
    """Give TensorFlow `threads` intra-op threads and one inter-op thread; returns the intra-op threads in effect.

    TensorFlow's thread pools are process-wide and fixed once its runtime starts: when it has
    already started in this process (stage one ran first, as in the demo), they stay as they
    are and what they are is returned (its default: one per core).
    """
    tf = import_tensorflow_quietly()
    threads = max(1, int(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        # one op at a time: the heads' graph is a chain, and a second pool would double the threads in use
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # the runtime has started; its pools cannot change any more
        pass
    return tf.config.threading.get_intra_op_parallelism_threads() or usable_cores()


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
