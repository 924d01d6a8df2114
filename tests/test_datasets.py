"""Dataset adapters: `featx fetch kermany` on fake archives / a faked kagglehub, `featx manifest nih` on fakes."""

from __future__ import annotations

import csv
import io
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from featx.cli import main
from featx.data.adapters.nih import NIH_FINDINGS, nih_manifest_command, nih_manifest_rows
from featx.data.datasets import (
    KERMANY_COUNTS,
    KERMANY_KAGGLE_HANDLE,
    fetch_command,
    fetch_kermany,
    kermany_manifest_path,
)
from featx.data.manifest import read_manifest, write_manifest
from featx.errors import FetchError, ManifestError

KERMANY_FILES = {
    "train/NORMAL/IM-0001-0001.jpeg": "NORMAL",
    "train/NORMAL/NORMAL2-IM-0002-0001.jpeg": "NORMAL",
    "train/PNEUMONIA/person1_bacteria_1.jpeg": "PNEUMONIA",
    "train/PNEUMONIA/person2_virus_2.jpeg": "PNEUMONIA",
    "test/NORMAL/IM-0003-0001.jpeg": "NORMAL",
    "test/PNEUMONIA/person3_virus_3.jpeg": "PNEUMONIA",
}


def _jpeg_bytes(seed: int, size: int = 8) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="JPEG")
    return buffer.getvalue()


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)


def _expected_manifest(tmp_path: Path, files=KERMANY_FILES) -> Path:
    rows = [
        {"path": path, "label": label, "split": path.split("/")[0], "patient_id": path.split("/")[-1][:6]}
        for path, label in files.items()
    ]
    return write_manifest(rows, tmp_path / "expected.csv")


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def _kermany_members(prefix: str, files=KERMANY_FILES) -> dict[str, bytes]:
    return {f"{prefix}{path}": _jpeg_bytes(i) for i, path in enumerate(files)}


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


# ---------------------------------------------------------------- fetch --from-zip


def test_fetch_from_mendeley_style_zip(tmp_path):
    members = _kermany_members("ChestXRay2017/chest_xray/")
    members["__MACOSX/ChestXRay2017/chest_xray/train/NORMAL/._IM-0001-0001.jpeg"] = b"resource fork"
    members["ChestXRay2017/chest_xray/train/NORMAL/.DS_Store"] = b"junk"
    # The same Mendeley release also ships OCT images laid out train/test/<class>: never taken.
    for i in range(10):
        members[f"OCT2017/train/CNV/CNV-{i}.jpeg"] = b"x"
        members[f"OCT2017/test/CNV/CNV-{i}.jpeg"] = b"x"
    archive = _zip(tmp_path / "ChestXRay2017.zip", members)
    summary = fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=_expected_manifest(tmp_path))
    assert summary.root_in_source == "ChestXRay2017/chest_xray"
    assert summary.files == 6
    for i, path in enumerate(KERMANY_FILES):
        assert (tmp_path / "data" / path).read_bytes() == _jpeg_bytes(i)
    assert not list((tmp_path / "data").rglob("._*"))
    assert not list((tmp_path / "data").rglob("*.partial"))
    assert not (tmp_path / "data" / "OCT2017").exists()
    assert summary.counts == {
        ("train", "NORMAL"): 2,
        ("train", "PNEUMONIA"): 2,
        ("test", "NORMAL"): 1,
        ("test", "PNEUMONIA"): 1,
    }
    assert summary.notes == ()


def test_fetch_from_kaggle_style_zip_with_duplicate_nesting_and_val(tmp_path):
    members = _kermany_members("chest_xray/")
    members.update(_kermany_members("chest_xray/chest_xray/"))
    members["chest_xray/val/NORMAL/IM-0009-0001.jpeg"] = _jpeg_bytes(99)
    members["chest_xray/__MACOSX/chest_xray/train/NORMAL/._x.jpeg"] = b"junk"
    archive = _zip(tmp_path / "archive.zip", members)
    summary = fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=_expected_manifest(tmp_path))
    assert summary.root_in_source == "chest_xray"
    assert (tmp_path / "data" / "val" / "NORMAL" / "IM-0009-0001.jpeg").is_file()
    assert any("val/NORMAL 1" in note for note in summary.notes)


def test_fetch_from_nested_zip(tmp_path):
    inner = _zip(tmp_path / "ChestXRay2017.zip", _kermany_members("chest_xray/"))
    outer = _zip(tmp_path / "download.zip", {"ChestXRay2017.zip": inner.read_bytes(), "readme.txt": b"hi"})
    summary = fetch_kermany(tmp_path / "data", from_zip=outer, expected_manifest=_expected_manifest(tmp_path))
    assert summary.files == 6
    assert (tmp_path / "data" / "test" / "PNEUMONIA" / "person3_virus_3.jpeg").is_file()
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith("tmp")]


def test_fetch_command_prints_counts_and_next_command(tmp_path):
    archive = _zip(tmp_path / "a.zip", _kermany_members("chest_xray/"))
    expected = _expected_manifest(tmp_path)
    console, buffer = _console()
    fetch_command("kermany", tmp_path / "data", archive, console, expected_manifest=expected)
    output = buffer.getvalue()
    assert f"featx extract --backbone resnet50 --manifest {expected} --data-root {tmp_path / 'data'}" in output
    assert f"featx manifest check {expected}" in output
    assert "6 files unpacked" in output


def test_fetch_wrong_counts_names_split_class_expected_and_found(tmp_path):
    files = dict(KERMANY_FILES)
    files["train/PNEUMONIA/person4_virus_4.jpeg"] = "PNEUMONIA"
    expected = _expected_manifest(tmp_path, files)
    archive = _zip(tmp_path / "a.zip", _kermany_members("chest_xray/"))
    with pytest.raises(FetchError) as info:
        fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=expected)
    message = str(info.value)
    assert "Expected 3 train/PNEUMONIA images" in message
    assert "found 2 of them" in message
    assert "person4_virus_4.jpeg" in message


def test_fetch_counts_without_manifest_use_official_counts(tmp_path):
    archive = _zip(tmp_path / "a.zip", _kermany_members("chest_xray/"))
    with pytest.raises(FetchError, match="Expected 1,341 train/NORMAL images under .*, found 2"):
        fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=None)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not a zip at all", "corrupt or not a zip"),
        (None, "corrupt or not a zip"),  # truncated: a real zip cut in half
    ],
)
def test_fetch_corrupt_archive(tmp_path, content, message):
    if content is None:
        whole = _zip(tmp_path / "whole.zip", _kermany_members("chest_xray/")).read_bytes()
        content = whole[: len(whole) // 2]
    archive = tmp_path / "bad.zip"
    archive.write_bytes(content)
    with pytest.raises(FetchError, match=message):
        fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=None)


def test_fetch_corrupt_member_crc(tmp_path):
    archive = _zip(tmp_path / "a.zip", _kermany_members("chest_xray/"))
    data = bytearray(archive.read_bytes())
    # Flip a byte inside the first member's stored data (ZipFile.writestr stores uncompressed).
    with zipfile.ZipFile(archive) as bundle:
        first = bundle.infolist()[0]
    offset = first.header_offset + 30 + len(first.filename.encode()) + 10
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(FetchError, match="corrupt"):
        fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=None)


def test_fetch_zip_without_kermany_layout(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"photos/cat.jpeg": _jpeg_bytes(0)})
    with pytest.raises(FetchError, match="not the Kermany"):
        fetch_kermany(tmp_path / "data", from_zip=archive, expected_manifest=None)


def test_fetch_missing_zip_and_unknown_dataset(tmp_path, capsys):
    with pytest.raises(FetchError, match="does not exist"):
        fetch_kermany(tmp_path / "data", from_zip=tmp_path / "absent.zip")
    assert main(["fetch", "kermani", "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'kermany'" in err and "Traceback" not in err


# ---------------------------------------------------------------- fetch via kagglehub (faked)


@pytest.fixture
def no_kaggle_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))


def _fake_kagglehub(monkeypatch, download_dir: Path, calls: list) -> None:
    module = types.ModuleType("kagglehub")

    def dataset_download(handle):
        calls.append(handle)
        return str(download_dir)

    module.dataset_download = dataset_download
    monkeypatch.setitem(sys.modules, "kagglehub", module)


def test_fetch_with_kagglehub(tmp_path, monkeypatch, no_kaggle_credentials):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    download = tmp_path / "kagglehub-cache" / "versions" / "2"
    for prefix in ("chest_xray/", "chest_xray/chest_xray/"):
        for i, path in enumerate(KERMANY_FILES):
            target = download / prefix / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_jpeg_bytes(i))
    (download / "chest_xray" / "__MACOSX" / "train" / "NORMAL").mkdir(parents=True)
    (download / "chest_xray" / "__MACOSX" / "train" / "NORMAL" / "._junk.jpeg").write_bytes(b"x")
    calls = []
    _fake_kagglehub(monkeypatch, download, calls)
    summary = fetch_kermany(tmp_path / "data", expected_manifest=_expected_manifest(tmp_path))
    assert calls == [KERMANY_KAGGLE_HANDLE]
    assert summary.source == f"kagglehub:{KERMANY_KAGGLE_HANDLE}"
    assert summary.root_in_source == "chest_xray"
    assert sorted(p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data").rglob("*.jpeg")) == sorted(
        KERMANY_FILES
    )
    assert (download / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg").is_file()  # the cache is left alone


def test_fetch_kagglehub_missing_credentials(tmp_path, monkeypatch, no_kaggle_credentials, capsys):
    calls = []
    _fake_kagglehub(monkeypatch, tmp_path, calls)
    with pytest.raises(FetchError) as info:
        fetch_kermany(tmp_path / "data")
    message = str(info.value)
    assert "KAGGLE_USERNAME" in message and "KAGGLE_KEY" in message and "kaggle.json" in message
    assert "--from-zip" in message
    assert calls == []
    assert main(["fetch", "kermany", "--dest", str(tmp_path / "d")]) == 2
    assert "No Kaggle credentials" in capsys.readouterr().err


def test_fetch_kagglehub_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # makes `import kagglehub` raise ImportError
    with pytest.raises(FetchError, match=r"pip install featx\[kaggle\]"):
        fetch_kermany(tmp_path / "data")


def test_fetch_kagglehub_download_failure_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    module = types.ModuleType("kagglehub")

    def dataset_download(handle):
        raise ConnectionError("network is unreachable")

    module.dataset_download = dataset_download
    monkeypatch.setitem(sys.modules, "kagglehub", module)
    with pytest.raises(FetchError, match="could not download .*network is unreachable"):
        fetch_kermany(tmp_path / "data")


# ---------------------------------------------------------------- the shipped manifest and counts


def test_builtin_counts_match_shipped_manifest():
    path = kermany_manifest_path()
    assert path is not None and path.name == "kermany2018.csv"
    manifest = read_manifest(path)
    counts = {}
    for labels, split in zip(manifest.labels, manifest.splits):
        counts[(split, labels[0])] = counts.get((split, labels[0]), 0) + 1
    assert counts == KERMANY_COUNTS


# ---------------------------------------------------------------- NIH ChestX-ray14

NIH_HEADER = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
]
NIH_ROWS = [
    ("00000001_000.png", "Cardiomegaly", "0", "1"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", "1", "1"),
    ("00000002_000.png", "No Finding", "0", "2"),
    ("00000003_000.png", "Hernia|Pleural_Thickening|Effusion", "0", "3"),
    ("00000004_000.png", "No Finding", "0", "4"),
]


def _nih(
    tmp_path: Path,
    rows=NIH_ROWS,
    header=NIH_HEADER,
    train=("00000001_000.png", "00000001_001.png", "00000002_000.png"),
    test=("00000003_000.png", "00000004_000.png"),
    images=None,
):
    entries = tmp_path / "Data_Entry_2017.csv"
    with entries.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for name, labels, follow, patient in rows:
            record = {
                "Image Index": name,
                "Finding Labels": labels,
                "Follow-up #": follow,
                "Patient ID": patient,
                "Patient Age": "50",
                "Patient Gender": "M",
                "View Position": "PA",
            }
            writer.writerow([record.get(column, "") for column in header])
    (tmp_path / "train_val_list.txt").write_text("\n".join(train) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    root = tmp_path / "nih"
    names = [row[0] for row in rows] if images is None else images
    for i, name in enumerate(names):
        _png(root / f"images_00{1 + i % 2}" / "images" / name, i)
    return entries, tmp_path / "train_val_list.txt", tmp_path / "test_list.txt", root


def test_nih_manifest_multilabel_official_split(tmp_path):
    entries, train, test, images = _nih(tmp_path)
    console, buffer = _console()
    nih_manifest_command(entries, train, test, images, tmp_path / "nih.csv", console)
    manifest = read_manifest(tmp_path / "nih.csv")
    assert manifest.multilabel
    assert manifest.classes[0] == "No Finding"
    assert set(manifest.classes) == {
        "No Finding",
        "Cardiomegaly",
        "Emphysema",
        "Hernia",
        "Pleural_Thickening",
        "Effusion",
    }
    rows = {
        Path(p).name: (p, labels, split, pid)
        for p, labels, split, pid in zip(manifest.paths, manifest.labels, manifest.splits, manifest.patient_ids)
    }
    assert rows["00000001_001.png"] == (
        "images_002/images/00000001_001.png",
        ("Cardiomegaly", "Emphysema"),
        "train",
        "1",
    )
    assert rows["00000003_000.png"][1:] == (("Hernia", "Pleural_Thickening", "Effusion"), "test", "3")
    assert rows["00000002_000.png"][1] == ("No Finding",)
    assert manifest.splits == ("train", "train", "train", "test", "test")
    assert manifest.meta == {"sex": ("M",) * 5, "age": ("50",) * 5, "view": ("PA",) * 5}
    for path in manifest.paths:
        assert (images / path).is_file()
    labels = manifest.label_array()
    assert labels.shape == (5, 6) and labels.sum() == 8  # 1 + 2 + 1 + 3 + 1 labels
    output = buffer.getvalue()
    assert "No patient appears in both splits" in output
    assert f"--manifest {tmp_path / 'nih.csv'} --data-root {images}" in output


def test_nih_flags_patient_leakage_of_the_lists(tmp_path):
    entries, train, test, images = _nih(
        tmp_path,
        train=("00000001_000.png", "00000002_000.png"),
        test=("00000001_001.png", "00000003_000.png", "00000004_000.png"),
    )
    console, buffer = _console()
    nih_manifest_command(entries, train, test, images, tmp_path / "nih.csv", console)
    assert "1 patient(s) appear in more than one split" in buffer.getvalue()


def test_nih_missing_columns(tmp_path):
    header = [c for c in NIH_HEADER if c != "Patient ID"]
    entries, train, test, images = _nih(tmp_path, header=header)
    with pytest.raises(ManifestError, match=r"missing the column\(s\) \['Patient ID'\]"):
        nih_manifest_rows(entries, train, test, images)


def test_nih_entries_that_are_not_text_are_one_sentence_not_a_traceback(tmp_path):
    """Data_Entry_2017.csv is read like every release table (adapters.common.read_table); bytes that are not UTF-8
    raised UnicodeDecodeError."""
    entries, train, test, images = _nih(tmp_path)
    entries.write_bytes(b"\xff\xfe\x00 not a CSV \x80")
    with pytest.raises(ManifestError, match=r"'.*' is not a readable CSV file \(UnicodeDecodeError\)\.$"):
        nih_manifest_rows(entries, train, test, images)


def test_nih_unknown_finding_names_it_and_the_line(tmp_path):
    rows = list(NIH_ROWS)
    rows[2] = ("00000002_000.png", "Effusion|Pneumonitis", "0", "2")
    entries, train, test, images = _nih(tmp_path, rows=rows)
    with pytest.raises(ManifestError) as info:
        nih_manifest_rows(entries, train, test, images)
    message = str(info.value)
    assert "line 4" in message and "['Pneumonitis']" in message and "'Pleural_Thickening'" in message


def test_nih_images_not_found(tmp_path):
    entries, train, test, images = _nih(tmp_path, images=["00000001_000.png", "00000002_000.png"])
    with pytest.raises(ManifestError, match=r"3 of the 5 images .* are not under .*'00000001_001.png'"):
        nih_manifest_rows(entries, train, test, images)


def test_nih_image_in_neither_list(tmp_path):
    entries, train, test, images = _nih(tmp_path, test=("00000003_000.png",))
    with pytest.raises(ManifestError, match=r"1 image\(s\) .* in neither .*'00000004_000.png'"):
        nih_manifest_rows(entries, train, test, images)


def test_nih_image_in_both_lists(tmp_path):
    entries, train, test, images = _nih(tmp_path, test=("00000002_000.png", "00000003_000.png", "00000004_000.png"))
    with pytest.raises(ManifestError, match=r"in both"):
        nih_manifest_rows(entries, train, test, images)


def test_nih_cli_bad_input_exit_2(tmp_path, capsys):
    header = [c for c in NIH_HEADER if c != "Finding Labels"]
    entries, train, test, images = _nih(tmp_path, header=header)
    code = main(
        [
            "manifest",
            "nih",
            "--entries",
            str(entries),
            "--train-list",
            str(train),
            "--test-list",
            str(test),
            "--images",
            str(images),
            "-o",
            str(tmp_path / "out.csv"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "Finding Labels" in err and "Traceback" not in err
    assert not (tmp_path / "out.csv").exists()


def test_nih_findings_are_the_fourteen():
    assert len(NIH_FINDINGS) == 14 and len(set(NIH_FINDINGS)) == 14
