"""`featx bench compare`: both ways run on the same images and split, and the compute is counted as they ran it."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from featx.bench.compare import CompareConfig, bench_compare_command, dense_grid_size
from featx.errors import FeatxError


def label_tree(root, n_patients=30, images_per_patient=2, size=32, seed=0):
    """root/<label>/<patient>_<k>.png: a brighter centre for PNEUMONIA, so either way can learn something."""
    rng = np.random.default_rng(seed)
    for patient in range(n_patients):
        label = ("NORMAL", "PNEUMONIA")[patient % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(images_per_patient):
            pixels = rng.integers(0, 120, size=(size, size)).astype(np.uint8)
            if label == "PNEUMONIA":
                pixels[8:24, 8:24] += 100
            Image.fromarray(pixels, mode="L").save(root / label / f"patient{patient:03d}_{k}.png")
    return root


def test_both_ways_run_on_the_same_split_and_count_their_forward_passes(tmp_path):
    data = label_tree(tmp_path / "images")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    config = CompareConfig(
        data_root=data, images=50, image_size=32, backbone="tiny", epochs=2, batch_size=8, workdir=tmp_path / "work"
    )
    result = bench_compare_command(config, console)
    subset = result["subset"]
    n_train, n_test = subset["images"]["train"], subset["images"]["test"]
    assert n_train + n_test == 50 and n_test > 0
    assert result["featx"].forward_passes == 50  # each image once
    assert result["seeds"].forward_passes == 2 * n_train + n_test  # every training image every epoch, then the test
    assert result["forward_ratio"] == pytest.approx((2 * n_train + n_test) / 50)
    # the seeds' way trains one head; featx's forward passes serve its whole dense grid
    assert result["search_ratio"] == pytest.approx(dense_grid_size() * (2 * n_train + n_test) / 50)
    for way in ("featx", "seeds"):
        auc = result[way].auc
        assert 0.0 <= auc["ci_low"] <= auc["value"] <= auc["ci_high"] <= 1.0
    shown = " ".join(console.file.getvalue().split())
    assert "backbone forward passes" in shown and "test AUC [95% CI, DeLong]" in shown
    n_valid = int(re.search(r"(\d+) validation images", result["seeds"].note).group(1))
    assert 0 < n_valid < n_train  # the seeds' way validates on held-out training patients every epoch


def test_more_images_than_the_folder_holds_is_one_sentence(tmp_path):
    data = label_tree(tmp_path / "images", n_patients=4)
    with pytest.raises(FeatxError, match="--images 100 is more than the 8 images"):
        bench_compare_command(CompareConfig(data_root=data, images=100, backbone="tiny"), Console(file=io.StringIO()))
