"""Tiny image trees and manifests for the stage-one tests (written by hand, no featx tooling needed)."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, rng: np.random.Generator, size: int = 32) -> None:
    pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def bomb_png(path: Path, width: int = 20_000, height: int = 20_000) -> None:
    """A valid PNG header announcing width x height pixels (4e8 > featx's limit) with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


BAD_FILES = {
    "bad/zero_byte.png": lambda path: path.write_bytes(b""),
    "bad/not_an_image.png": lambda path: path.write_text("this is a text file, not a PNG"),
    "bad/truncated.jpeg": None,  # filled in by make_tree from a real JPEG
    "bad/bomb.png": bomb_png,
}


def make_tree(
    root: Path, n: int = 24, size: int = 32, seed: int = 0, bad: bool = False, manifest_name: str = "manifest.csv"
) -> Path:
    """n small grayscale PNGs under root/images (two classes, 2 images per patient, last 4 rows test) + manifest.

    With bad=True the manifest also lists a zero-byte file, a text file, a truncated JPEG
    and a decompression-bomb PNG, spread through the rows. Returns the manifest path.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    rows = []
    for index in range(n):
        rel = f"images/img_{index:04d}.png"
        write_png(root / rel, rng, size)
        rows.append(
            [rel, ("NORMAL", "PNEUMONIA")[index % 2], "test" if index >= n - 4 else "train", f"patient{index // 2:04d}"]
        )
    if bad:
        (root / "bad").mkdir(exist_ok=True)
        for offset, (rel, make) in enumerate(BAD_FILES.items()):
            target = root / rel
            if make is None:
                buffer = root / "bad" / "whole.jpeg"
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, quality=90)
                data = buffer.read_bytes()
                target.write_bytes(data[: len(data) // 3])
                buffer.unlink()
            else:
                make(target)
            rows.insert(min(len(rows), 3 + offset * 5), [rel, "PNEUMONIA", "train", f"bad{offset}"])
    manifest = root / manifest_name
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "label", "split", "patient_id"])
        writer.writerows(rows)
    return manifest
