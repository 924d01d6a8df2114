"""The phantom generator: deterministic, well-formed manifest, patient-level split, separable classes."""

from __future__ import annotations

import csv
import hashlib
import re

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from featx.data.synthetic import PhantomParams, existing_phantoms, generate_phantoms
from featx.errors import FeatxError


def _rows(manifest):
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    a = generate_phantoms(tmp_path / "a", n_patients=10, image_size=32, seed=3)
    b = generate_phantoms(tmp_path / "b", n_patients=10, image_size=32, seed=3)
    c = generate_phantoms(tmp_path / "c", n_patients=10, image_size=32, seed=4)
    assert _tree_bytes(a.parent) == _tree_bytes(b.parent)
    assert a.read_bytes() != c.read_bytes()


def test_manifest_columns_ids_hashes_and_patient_level_stratified_split(tmp_path):
    manifest = generate_phantoms(tmp_path, n_patients=40, images_per_patient=(2, 4), image_size=32, seed=1)
    rows = _rows(manifest)
    assert list(rows[0]) == ["path", "label", "split", "patient_id", "sha256", "sex", "age", "view"]
    for row in rows:
        assert re.fullmatch(r"phantom-\d{4}", row["patient_id"])
        data = (tmp_path / row["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        with Image.open(tmp_path / row["path"]) as image:
            assert image.size == (32, 32) and image.mode == "L"

    per_patient = {}
    for row in rows:
        per_patient.setdefault(row["patient_id"], set()).add((row["label"], row["split"]))
    assert len(per_patient) == 40
    assert all(len(v) == 1 for v in per_patient.values()), "a patient has one label and sits in one split"
    counts = {}
    for ((label, split),) in per_patient.values():
        counts[(label, split)] = counts.get((label, split), 0) + 1
    assert set(counts) == {(lab, sp) for lab in ("normal", "opacity") for sp in ("train", "test")}
    n_positive = counts[("opacity", "train")] + counts[("opacity", "test")]
    assert n_positive == round(0.74 * 40)
    n_test = counts[("opacity", "test")] + counts[("normal", "test")]
    assert 6 <= n_test <= 10
    images = {pid: sum(r["patient_id"] == pid for r in rows) for pid in per_patient}
    assert min(images.values()) >= 2 and max(images.values()) <= 4


def test_classes_are_separable_by_mean_lung_field_intensity(tmp_path):
    size = 64
    manifest = generate_phantoms(tmp_path, n_patients=60, image_size=size, seed=0)
    rows = _rows(manifest)
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(axis, axis)
    lung_fields = ((np.abs(np.abs(u) - 0.36) / 0.2) ** 2 + ((v + 0.08) / 0.42) ** 2) < 1
    statistic, positive = [], []
    for row in rows:
        pixels = np.asarray(Image.open(tmp_path / row["path"]), dtype=float)
        statistic.append(pixels[lung_fields].mean() / pixels.mean())  # lung brightness relative to exposure
        positive.append(row["label"] == "opacity")
    assert roc_auc_score(positive, statistic) > 0.8
    # ...but not trivially: the normal and opacity images overlap on that statistic
    assert roc_auc_score(positive, statistic) < 0.995


def test_existing_phantoms_only_matches_the_same_parameters(tmp_path):
    manifest = generate_phantoms(tmp_path, n_patients=8, image_size=24, seed=0)
    same = PhantomParams(8, (2, 5), 24, 0.74, 0.2, 0)
    assert existing_phantoms(tmp_path, same) == manifest
    assert existing_phantoms(tmp_path, PhantomParams(8, (2, 5), 24, 0.74, 0.2, 1)) is None
    first = _rows(manifest)[0]["path"]
    (tmp_path / first).unlink()
    assert existing_phantoms(tmp_path, same) is None, "a missing image means the dataset is incomplete"


def test_regenerating_removes_the_previous_images(tmp_path):
    old = {r["path"] for r in _rows(generate_phantoms(tmp_path, n_patients=12, image_size=24, seed=0))}
    new = {r["path"] for r in _rows(generate_phantoms(tmp_path, n_patients=8, image_size=24, seed=0))}
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")}
    assert on_disk == new and old - new


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_patients": 3}, "at least 8 patients"),
        ({"images_per_patient": (3, 2)}, "images_per_patient"),
        ({"image_size": 8}, "at least 16 pixels"),
        ({"positive_fraction": 1.0}, "positive_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
    ],
)
def test_bad_parameters_are_one_clear_sentence(tmp_path, kwargs, words):
    with pytest.raises(FeatxError, match=words):
        generate_phantoms(tmp_path, **{"image_size": 24, **kwargs})
