"""Process-wide plumbing: TensorFlow without its start-up chatter, Ctrl-C at safe points, library versions.

TensorFlow 2.2x prints absl "before InitializeLog" lines, oneDNN and CUDA-probe
notices straight to file descriptor 2, ignoring TF_CPP_MIN_LOG_LEVEL. The CLI
imports it through here for the commands that need it, so the user's terminal
shows featx's progress and results, not that noise. If the import fails, what
TensorFlow printed is replayed before the exception propagates.

Python runs a SIGINT handler at the next bytecode, which inside a native library
is whatever Python callback it calls: a KeyboardInterrupt raised inside XGBoost's
ctypes data-iterator callback aborted the process with heap corruption. Code that
must not be cut there runs under `interrupts_deferred()`: Ctrl-C is remembered,
long loops stop early at their own safe points (`interrupt_pending()`), and the
KeyboardInterrupt is raised when the block ends; the CLI then says "featx:
interrupted" and exits 130.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from featx.config import usable_cores


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


def limit_tensorflow_threads(threads: int) -> int:
    """Give TensorFlow `threads` intra-op and inter-op threads; returns the intra-op threads in effect.

    TensorFlow's thread pools are process-wide and fixed once its runtime starts: when it has
    already started in this process (stage one ran first, as in the demo), they stay as they
    are and what they are is returned (its default: one per core).
    """
    tf = import_tensorflow_quietly()
    threads = max(1, int(threads))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        # the heads trained side by side are independent chains of ops: run them side by side too (measured on
        # the bench's dense search, 2 cores: 41.5-44.9 s against 47.7-51.7 s one op at a time, same results)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # the runtime has started; its pools cannot change any more
        pass
    return tf.config.threading.get_intra_op_parallelism_threads() or usable_cores()


class _Deferral:
    depth = 0  # nesting of interrupts_deferred blocks (main thread only)
    pending = False  # a Ctrl-C arrived inside one


def _remember_interrupt(signum, frame) -> None:
    _Deferral.pending = True


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Inside the block Ctrl-C (SIGINT) only sets a flag; KeyboardInterrupt is raised when the outermost block ends.

    Signal handlers belong to the main thread: elsewhere, or where SIGINT is not Python's default handler
    (ignored in a background job, or someone else's handler), the block runs unchanged.
    """
    if _Deferral.depth:  # nested: the outermost block installed the handler and raises
        _Deferral.depth += 1
        try:
            yield
        finally:
            _Deferral.depth -= 1
        return
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, _remember_interrupt)
    _Deferral.depth = 1
    try:
        yield
    finally:
        _Deferral.depth = 0
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if _Deferral.pending:
            _Deferral.pending = False
            raise KeyboardInterrupt


def interrupt_pending() -> bool:
    """True when Ctrl-C arrived inside the current interrupts_deferred block: a safe point should stop early."""
    return _Deferral.pending


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
