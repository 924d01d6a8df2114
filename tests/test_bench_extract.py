"""The extract benchmark's own pieces (the benchmark itself reports numbers; it asserts nothing)."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from rich.console import Console

from featx.bench import extract as bench
from featx.data.manifest import read_manifest


def test_generated_jpegs_are_large_grayscale_and_listed_in_a_manifest(tmp_path):
    manifest = bench.write_jpegs(tmp_path, count=5, side=300)
    read = read_manifest(manifest)
    assert len(read) == 5 and read.classes == ("NORMAL", "PNEUMONIA")
    with Image.open(tmp_path / read.paths[3]) as image:
        assert image.format == "JPEG" and image.mode == "L" and image.size == (300, 300)
    assert bench.peak_rss_mib() >= bench.rss_mib() > 10


def test_bad_image_counts_are_refused(tmp_path):
    from featx.errors import FeatxError

    with pytest.raises(FeatxError, match="positive image counts"):
        bench.bench_extract_command("tiny", (0, 5), 64, 4, tmp_path, Console(file=io.StringIO()))


@pytest.mark.slow
def test_bench_extract_runs_end_to_end_with_the_tiny_backbone(tmp_path):
    console = Console(file=io.StringIO(), width=160)
    bench.bench_extract_command("tiny", (8, 16), 200, 4, tmp_path, console)
    out = console.file.getvalue()
    assert "extract / bare forward" in out and "peak RSS N=8" in out and "N=16" in out
