"""Kill-and-resume: `featx extract` SIGKILLed mid-run, run again, ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from imagetree import make_tree
from rich.console import Console
from tinyextract import n_done_of, tiny_args, tiny_config

from featx.extract import store
from featx.extract.stage import ExtractConfig, run_extract

ROWS = 240
BATCH = 2


def extract_args(manifest: Path, out: Path) -> list[str]:
    return tiny_args(manifest, out, "--seed", "4", "--pooling", "avg,max", "--batch-size", str(BATCH), "--workers", "1")


def config(manifest: Path, out: Path) -> ExtractConfig:
    return tiny_config(manifest, out, seed=4, poolings=("avg", "max"), batch_size=BATCH, workers=1)


def kill_mid_run(manifest: Path, out: Path, timeout: float = 180.0) -> int:
    """Start featx extract in a subprocess, SIGKILL it once some rows but not all are flushed; the n_done seen."""
    partial = store.partial_path(store.cache_path(out, "tiny"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.Popen(
        [sys.executable, "-m", "featx.cli", *extract_args(manifest, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + timeout
    seen = None
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if partial.exists():
                seen = n_done_of(partial)
                if seen:
                    break
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    if child.returncode != -signal.SIGKILL:
        pytest.fail(
            f"featx extract ended on its own (code {child.returncode}) before it could be killed: "
            f"{child.stderr.read().decode()[-500:]}"
        )
    return seen


def datasets(path: Path) -> dict:
    found = {}

    def collect(name, obj):  # returns None so visititems keeps going
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[()]

    with h5py.File(path, "r") as handle:
        handle.visititems(collect)
    return found


def test_killed_extract_resumes_and_matches_an_uninterrupted_run(tmp_path):
    manifest = make_tree(tmp_path / "data", n=ROWS, size=24, bad=True)
    killed_out, clean_out = tmp_path / "killed", tmp_path / "clean"

    seen = kill_mid_run(manifest, killed_out)
    partial = store.partial_path(store.cache_path(killed_out, "tiny"))
    assert seen and partial.exists() and not store.cache_path(killed_out, "tiny").exists()
    left_at = n_done_of(partial)
    assert 0 < left_at < ROWS + 4 and left_at % BATCH == 0
    with pytest.raises(Exception, match="unfinished"):
        store.load(partial)

    console = Console(file=io.StringIO(), width=120)
    resumed = run_extract(config(manifest, killed_out), console)[0]
    assert resumed.status == "resumed", console.file.getvalue()
    assert f"Resuming tiny.h5.partial at row {left_at}" in console.file.getvalue()
    assert not partial.exists() and not store.lock_path(store.cache_path(killed_out, "tiny")).exists()

    clean = run_extract(config(manifest, clean_out), Console(file=io.StringIO()))[0]
    assert clean.status == "built"
    want, got = datasets(clean.path), datasets(resumed.path)
    assert sorted(want) == sorted(got) and "embeddings/avg" in want and "errors" in want
    for name in want:
        a, b = want[name], got[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype.kind == "O":
            assert a.tolist() == b.tolist(), name
        else:
            assert a.tobytes() == b.tobytes(), name
    assert len(want["errors"]) == 4
