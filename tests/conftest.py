"""Shared test set-up: quiet TensorFlow, CPU only, the realdata marker."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest

# ../shared beside the checkout (/work/main -> /work/shared), or beside its parent for a worktree
# (/work/wt/NAME -> /work/shared); FEATX_SHARED_DATA points elsewhere
_SHARED_CANDIDATES = [parent / "shared" / "data" for parent in Path(__file__).resolve().parents[2:4]]
SHARED_DATA = Path(
    os.environ.get("FEATX_SHARED_DATA")
    or next((path for path in _SHARED_CANDIDATES if path.is_dir()), _SHARED_CANDIDATES[0])
)
KERMANY_TRAIN = SHARED_DATA / "kermany224" / "train"


@pytest.fixture
def kermany_train() -> Path:
    """The 5,216 real training images in ../shared (skips where absent)."""
    if not KERMANY_TRAIN.is_dir():
        pytest.skip("../shared/data/kermany224 is not present")
    return KERMANY_TRAIN


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path_factory, monkeypatch):
    """Never touch the user's ~/.keras: imagenet weights are absent unless a test puts them there."""
    home = tmp_path_factory.getbasetemp() / "keras_home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture
def offline(monkeypatch):
    """No network: every URL opened fails the way a failed DNS lookup does, and is counted.

    Keras's get_file downloads with urllib.request.urlretrieve, which opens the URL through
    urllib.request.urlopen; everything above that (Keras's cache lookup, hash check, clean-up) runs for real.
    """
    attempts = []

    def refuse(url, *args, **kwargs):
        attempts.append(getattr(url, "full_url", url))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return attempts


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray (2 CPUs, temporary RAY_TMPDIR, no dashboard) for every Ray test of the session.

    address="local" never joins a cluster RAY_ADDRESS may name. At the end of the session every process
    this Ray started must have exited (ray.shutdown() returns before its actors do).
    """
    pytest.importorskip("ray.data", reason="the featx[ray] extra is not installed")
    from raycluster import LocalRay

    cluster = LocalRay(num_cpus=2)
    yield cluster
    left = cluster.stop()
    assert not left, f"Ray processes still running after ray.shutdown(): {left}"


@pytest.fixture(autouse=True)
def _not_under_make(monkeypatch):
    """`make test` exports FEATX_VIA_MAKE=1; tests see a plain `featx` unless they run make themselves."""
    monkeypatch.delenv("FEATX_VIA_MAKE", raising=False)
