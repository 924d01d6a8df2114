"""One local Ray for the whole test session, and the processes it started (read from /proc, no psutil needed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces; the parent pid follows it
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(root: int) -> set[int]:
    """Every live process below `root` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = _parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


class LocalRay:
    """ray.init(address="local", num_cpus=2) in a temporary RAY_TMPDIR; `stop` proves every process it started ended."""

    def __init__(self, num_cpus: int = 2):
        import ray

        self.ray = ray
        self.before = descendants(os.getpid())
        self.tmpdir = tempfile.mkdtemp(prefix="featx-ray-", dir="/tmp")  # short: Ray's socket paths have a limit
        self._saved_tmpdir = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = self.tmpdir
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        self.address = ray.get_runtime_context().gcs_address

    def started(self) -> set[int]:
        """The live processes this session's Ray started (GCS, raylet, agents, workers, actors: "ray" is in each
        command line; joblib's loky workers, also children of the tests, are not Ray's)."""
        new = descendants(os.getpid()) - self.before
        return {pid for pid in new if alive(pid) and "ray" in command_line(pid).lower()}

    def stop(self, timeout: float = 60.0) -> list[str]:
        """ray.shutdown(), then wait for every process it had started; the command lines of any left behind
        (which are then killed, so one failing session does not leak into the next)."""
        pids = self.started()
        self.ray.shutdown()  # returns before actor processes have exited
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.2)
        left = [f"{pid}: {command_line(pid)}" for pid in sorted(pids) if alive(pid)]
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._saved_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = self._saved_tmpdir
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        return left
