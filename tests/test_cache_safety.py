"""Issue 19, item 1: a forgotten manifest= must never cost a user their cache, and a moved data folder must not
cost a re-extract.

The sequence a new user followed: a cache of their own images, then `make extract` without manifest= (which
silently used the demo manifest), then the error's advice `force=1`, which replaced their cache with demo rows.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from imagetree import make_tree
from tinyextract import tiny_args

from featx.cli import main

REPO = Path(__file__).resolve().parents[1]
FEATX_SCRIPT = Path(sys.prefix) / "bin" / "featx"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_extract(*variables: str) -> subprocess.CompletedProcess:
    """A real `make extract` in the repository with the running venv; -o keeps make from reinstalling it."""
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "-o", str(FEATX_SCRIPT), "extract", *variables]
        + [f"VENV={sys.prefix}", "backbone=tiny", "weights=random"],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def users_cache(tmp_path):
    """A complete tiny cache of the user's own 12 images, in tmp_path/features."""
    manifest = make_tree(tmp_path / "mine", n=12, seed=1)
    features = tmp_path / "features"
    assert main(tiny_args(manifest, features)) == 0
    cache = features / "tiny.h5"
    return manifest, features, cache, _digest(cache)


def test_make_extract_without_manifest_never_touches_the_users_cache(users_cache, tmp_path):
    manifest, features, cache, before = users_cache
    forgot = _make_extract(f"features={features}", "image_size=32")
    assert forgot.returncode != 0
    assert "manifest=CSV" in forgot.stderr and "data=DIR" in forgot.stderr and "demo" in forgot.stderr
    # the old error's advice, force=1, followed to the letter
    forced = _make_extract(f"features={features}", "image_size=32", "force=1")
    assert forced.returncode != 0 and "manifest=CSV" in forced.stderr
    # data= given, manifest= forgotten: the message names the manifest, not data=
    half = _make_extract(f"features={features}", f"data={manifest.parent}")
    assert half.returncode != 0 and "manifest=CSV" in half.stderr and "data=DIR" not in half.stderr
    assert _digest(cache) == before


def test_another_datasets_manifest_is_refused_without_advising_force(users_cache, tmp_path, capsys):
    _, features, cache, before = users_cache
    other = make_tree(tmp_path / "other", n=20, seed=2)
    assert main(tiny_args(other, features)) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert "holds other images" in message and "--out another folder" in message
    assert "pass --force" not in message and "--force would delete it: a cache of 12 rows from manifest" in message
    assert _digest(cache) == before


def test_settings_mismatch_on_the_same_images_offers_out_before_force(users_cache, capsys):
    manifest, features, cache, before = users_cache
    assert main(tiny_args(manifest, features, "--image-size", "48")) == 2
    message = capsys.readouterr().err
    assert "different settings" in message and "--out another folder to keep both, or --force" in message
    assert _digest(cache) == before


def test_a_moved_data_folder_reuses_the_cache_when_every_file_hash_matches(users_cache, tmp_path, capsys):
    manifest, features, cache, before = users_cache
    moved = tmp_path / "moved"
    shutil.move(str(manifest.parent), moved)
    capsys.readouterr()
    assert main(tiny_args(moved / manifest.name, features)) == 0
    out = capsys.readouterr().out
    assert "cache hit" in out and "has the cached sha256" in out
    assert _digest(cache) == before  # untouched: its content sha256, and so every run fitted on it, is unchanged

    # one changed file under the new root: not the cached images any more
    first = sorted((moved / "images").glob("*.png"))[0]
    first.write_bytes(first.read_bytes() + b"\0")
    assert main(tiny_args(moved / manifest.name, features)) == 2
    assert "holds other images" in capsys.readouterr().err
    assert _digest(cache) == before
