"""Data roots given as fsspec URLs: images read through the filesystem, the same embeddings as from a folder."""

from __future__ import annotations

import io

import h5py
import pytest
from imagetree import make_tree
from rich.console import Console
from tinyextract import tiny_config

from featx.data import images
from featx.data.storage import is_url, open_data_root
from featx.errors import FeatxError, ImageReadError, ManifestError
from featx.extract.stage import ExtractConfig, run_extract

fsspec = pytest.importorskip("fsspec", reason="fsspec comes with the featx[ray] extra")


@pytest.fixture
def memory_tree(tmp_path):
    """The same small tree in a folder and in fsspec's in-memory filesystem (memory://cxr)."""
    manifest = make_tree(tmp_path / "data", n=24, size=32, bad=True)
    memory = fsspec.filesystem("memory")
    for path in sorted((tmp_path / "data").rglob("*")):
        if path.is_file() and path.name != manifest.name:
            memory.pipe(f"/cxr/{path.relative_to(tmp_path / 'data').as_posix()}", path.read_bytes())
    yield manifest
    memory.rm("/cxr", recursive=True)


def config(manifest, data_root, out) -> ExtractConfig:
    return tiny_config(manifest, out, data_root=data_root, seed=1, batch_size=8, workers=1)


def contents(path) -> tuple[dict, str]:
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        root = handle.attrs["data_root"]
        return found, root.decode() if isinstance(root, bytes) else str(root)


def test_a_memory_filesystem_root_gives_the_folder_s_embeddings(memory_tree, tmp_path):
    quiet = Console(file=io.StringIO())
    folder = run_extract(config(memory_tree, memory_tree.parent, tmp_path / "folder"), quiet)[0]
    memory = run_extract(config(memory_tree, "memory://cxr", tmp_path / "memory"), quiet)[0]
    (want, want_root), (got, got_root) = contents(folder.path), contents(memory.path)
    assert (want_root, got_root) == (str(memory_tree.parent.resolve()), "memory://cxr")
    assert sorted(want) == sorted(got)
    for name in want:
        assert want[name].tolist() == got[name].tolist(), name
    # the four unreadable files fail for the same reasons through the filesystem
    assert memory.failures == 4 and [line.split("\t")[1] for line in got["errors"].astype(str)] == [
        line.split("\t")[1] for line in want["errors"].astype(str)
    ]


def test_reading_through_a_filesystem_names_missing_and_empty_files(memory_tree):
    memory = fsspec.filesystem("memory")
    with pytest.raises(ImageReadError) as missing:
        images.load_image("/cxr/images/nope.png", 32, filesystem=memory)
    assert missing.value.reason == "file not found"
    memory.pipe("/cxr/empty.png", b"")
    with pytest.raises(ImageReadError) as empty:
        images.load_image("/cxr/empty.png", 32, filesystem=memory)
    assert empty.value.reason == "empty file (0 bytes)"
    with pytest.raises(ImageReadError) as folder:
        images.load_image("/cxr/images", 32, filesystem=memory)
    assert folder.value.reason == "not a regular file"


def test_urls_and_folders_are_told_apart_and_bad_roots_are_one_sentence(tmp_path):
    assert is_url("s3://bucket/cxr") and is_url("file:///data") and is_url("memory://x")
    assert not is_url("data/cxr") and not is_url(tmp_path) and not is_url("C:/data")
    with pytest.raises(ManifestError, match=r"^Cannot open the data root 'nosuchprotocol://x' \("):
        open_data_root("nosuchprotocol://x")
    root = open_data_root("memory://cxr-missing")
    assert not root.is_dir()
    with pytest.raises(ManifestError, match="escapes the data root"):
        root.resolve("../outside.png")


def test_extract_refuses_a_url_root_that_is_not_a_folder(memory_tree, tmp_path):
    with pytest.raises(FeatxError, match=r"^The data root 'memory://elsewhere' is not a folder; pass --data-root"):
        run_extract(config(memory_tree, "memory://elsewhere", tmp_path / "f"))
