"""Ways to damage a finished HDF5 cache, shared by the store and extract/classify tests (issue 8, cases 3-4)."""

from __future__ import annotations

import h5py
import numpy as np


def flip_byte(path, offset: int, bits: int = 0xFF) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ bits]))


def flip_in_chunk(name: str):
    """Flip one byte inside the first chunk of a chunked dataset (the raw numbers, not HDF5's metadata)."""

    def damage(path):
        with h5py.File(path, "r") as handle:
            offset = handle[name].id.get_chunk_info(0).byte_offset
        flip_byte(path, offset + 1)

    return damage


def flip_in_string(text: bytes):
    """Change one character of a stored string (still valid text)."""

    def damage(path):
        data = path.read_bytes()
        assert data.count(text) == 1
        flip_byte(path, data.index(text) + len(text) - 5, bits=0x01)

    return damage


def edit(change):
    def damage(path):
        with h5py.File(path, "r+") as handle:
            change(handle)

    return damage


def delete(name):
    return edit(lambda handle: handle.__delitem__(name))


def set_attr(key, value):
    return edit(lambda handle: handle.attrs.__setitem__(key, value))


# For test_store's 10-row cache (row 5 failed with "truncated file"): (damage, what the sentence names).
DAMAGE = {
    "flipped embeddings chunk": (flip_in_chunk("embeddings/avg"), "/embeddings/avg"),
    "flipped /ok": (flip_in_chunk("ok"), "/ok"),
    "flipped /labels": (flip_in_chunk("labels"), "/labels"),
    "flipped /sha256": (flip_in_chunk("sha256"), "/sha256"),
    "flipped image path": (flip_in_string(b"img/007.png"), "/ids fails its checksum"),
    "flipped error line": (flip_in_string(b"truncated file"), "/errors fails its checksum"),
    "changed patient id": (edit(lambda h: h["patient_id"].__setitem__(0, b"p4")), "no longer matches the sha256"),
    "changed attribute": (
        set_attr("featx_version", "9.9.9"),
        "no longer matches the sha256 recorded when it was built",
    ),
    **{
        f"deleted {name}": (delete(name), f"dataset /{name} is missing")
        for name in ("ok", "labels", "split", "patient_id", "errors", "sha256", "embeddings/avg")
    },
    "n_done lowered": (set_attr("n_done", np.int64(4)), "marked complete, but n_done is 4 of 10 rows"),
    "complete set false": (set_attr("complete", np.bool_(False)), "marked incomplete at 10 of 10 rows"),
    "checksum attribute deleted": (edit(lambda h: h.attrs.__delitem__("content_sha256")), "no content checksum"),
}
