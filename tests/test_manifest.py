"""Manifests: reading, writing, patient parsers, scanning trees and checking them."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from featx.cli import main
from featx.data.manifest import (
    PATIENT_PARSERS,
    check_command,
    check_manifest,
    manifest_from_file_list,
    order_classes,
    read_manifest,
    resolve_path,
    scan,
    scan_command,
    write_manifest,
)
from featx.errors import ManifestError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_KERMANY = REPO / "data_manifests" / "kermany2018.csv"
SHARED_FILE_LIST = REPO.parent / "shared" / "data" / "kermany2018_files.csv"


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _touch(root: Path, rel: str, content: bytes = b"x") -> Path:
    file = root / rel
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(content)
    return file


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False), buffer


# ---------------------------------------------------------------- read / write


def test_read_manifest_parses_columns_labels_and_hash(tmp_path):
    text = (
        "path,label,split,patient_id,sha256\n"
        "a.png,PNEUMONIA,train,p1,\n"
        "b.png,NORMAL,test,p2,ABC\n"
        "c.png, NORMAL ,val, p3 ,\n"
    )
    file = _write(tmp_path / "m.csv", text)
    manifest = read_manifest(file)
    assert len(manifest) == 3
    assert manifest.paths == ("a.png", "b.png", "c.png")
    assert manifest.labels == (("PNEUMONIA",), ("NORMAL",), ("NORMAL",))
    assert manifest.splits == ("train", "test", "val")
    assert manifest.patient_ids == ("p1", "p2", "p3")
    assert manifest.file_sha256 == ("", "abc", "")
    assert manifest.classes == ("NORMAL", "PNEUMONIA")
    assert not manifest.multilabel
    assert manifest.sha256_hex == hashlib.sha256(file.read_bytes()).hexdigest()
    np.testing.assert_array_equal(manifest.label_array(), np.array([1, 0, 0], dtype=np.int8))
    assert manifest.label_array().dtype == np.int8


def test_read_manifest_multilabel_gives_indicator_matrix(tmp_path):
    text = (
        "path,label,split,patient_id\n"
        "a.png,Effusion|Cardiomegaly,train,1\n"
        "b.png,No Finding,train,2\n"
        "c.png,Effusion,test,3\n"
    )
    manifest = read_manifest(_write(tmp_path / "m.csv", text))
    assert manifest.multilabel
    assert manifest.file_sha256 is None
    assert manifest.classes == ("No Finding", "Cardiomegaly", "Effusion")
    expected = np.array([[0, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=np.int8)
    np.testing.assert_array_equal(manifest.label_array(), expected)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("path,label,split\na.png,A,train\n", ["missing the column(s) ['patient_id']", "required columns"]),
        ("", ["is empty"]),
        ("path,label,split,patient_id\n", ["no rows"]),
        (
            "path,label,split,patient_id\na.png,A,train,p1\nb.png,A,tset,p2\n",
            ["line 3", "'split'", "did you mean 'test'"],
        ),
        ("path,label,split,patient_id\na.png,,train,p1\n", ["line 2", "'label'"]),
        ("path,label,split,patient_id\na.png,A|,train,p1\n", ["line 2", "'label'"]),
        ("path,label,split,patient_id\na.png,A,train,\n", ["line 2", "'patient_id'"]),
        ("path,label,split,patient_id\n,A,train,p1\n", ["line 2", "'path'"]),
    ],
)
def test_read_manifest_rejects_bad_input_with_location(tmp_path, text, fragments):
    file = _write(tmp_path / "m.csv", text)
    with pytest.raises(ManifestError) as info:
        read_manifest(file)
    message = str(info.value)
    assert str(file) in message
    for fragment in fragments:
        assert fragment in message


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_order_classes_puts_negative_like_first():
    assert order_classes(["PNEUMONIA", "NORMAL"]) == ("NORMAL", "PNEUMONIA")
    assert order_classes(["b", "a", "b"]) == ("a", "b")
    assert order_classes(["Mass", "No Finding", "Atelectasis"]) == ("No Finding", "Atelectasis", "Mass")
    assert order_classes(["tumour", "healthy"]) == ("healthy", "tumour")
    assert order_classes(["positive", "Negative"]) == ("Negative", "positive")


def test_write_then_read_round_trip_is_byte_stable(tmp_path):
    rows = [
        {"path": "x/a.png", "label": ("Mass", "Nodule"), "split": "train", "patient_id": "7"},
        {"path": "x/b, with comma.png", "label": "Mass", "split": "test", "patient_id": "8"},
    ]
    first = write_manifest(rows, tmp_path / "sub" / "m.csv")
    data = first.read_bytes()
    assert b"\r" not in data
    assert not (tmp_path / "sub" / "m.csv.partial").exists()
    manifest = read_manifest(first)
    assert manifest.paths == ("x/a.png", "x/b, with comma.png")
    assert manifest.labels == (("Mass", "Nodule"), ("Mass",))
    assert manifest.file_sha256 is None
    write_manifest(rows, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == data


def test_write_manifest_keeps_sha256_when_given(tmp_path):
    rows = [{"path": "a.png", "label": "A", "split": "train", "patient_id": "1", "sha256": "ff"}]
    manifest = read_manifest(write_manifest(rows, tmp_path / "m.csv"))
    assert manifest.file_sha256 == ("ff",)


def test_resolve_path_stays_inside_root(tmp_path):
    assert resolve_path(tmp_path, "train/A/x.png") == tmp_path / "train" / "A" / "x.png"
    assert resolve_path(tmp_path, "train/../test/x.png") == tmp_path / "test" / "x.png"
    for bad in ("../x.png", "train/../../x.png", "/etc/passwd", "C:/x.png", "..\\x.png"):
        with pytest.raises(ManifestError, match="escapes the data root"):
            resolve_path(tmp_path, bad)


# ---------------------------------------------------------------- patient parsers


@pytest.mark.parametrize(
    "name, patient",
    [
        ("train/PNEUMONIA/person1_bacteria_1.jpeg", "person1"),
        ("person1017_virus_1711.jpeg", "person1017"),
        ("person26_virus_60_1.jpeg", "person26"),
        ("train/NORMAL/IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0131-0001-0002.jpeg", "IM-0131"),
        ("NORMAL2-IM-0115-0001.jpeg", "NORMAL2-IM-0115"),
        ("scan_001.png", None),
    ],
)
def test_kermany_parser(name, patient):
    assert PATIENT_PARSERS["kermany"](name) == patient


def test_kermany_families_do_not_collide():
    parse = PATIENT_PARSERS["kermany"]
    ids = {parse("person115_virus_1.jpeg"), parse("IM-0115-0001.jpeg"), parse("NORMAL2-IM-0115-0001.jpeg")}
    assert len(ids) == 3


def test_generic_parser_uses_stem():
    assert PATIENT_PARSERS["generic"]("a/b/scan_001.png") == "scan_001"


# ---------------------------------------------------------------- scan


def _kermany_like_tree(root: Path) -> None:
    for rel in (
        "train/NORMAL/IM-0001-0001.jpeg",
        "train/NORMAL/IM-0001-0002.jpeg",
        "train/NORMAL/NORMAL2-IM-0001-0001.jpeg",
        "train/PNEUMONIA/person1_bacteria_1.jpeg",
        "train/PNEUMONIA/person1_bacteria_2.jpeg",
        "train/PNEUMONIA/person2_virus_3.jpeg",
        "test/NORMAL/IM-0009-0001.jpeg",
        "test/PNEUMONIA/person3_virus_9.jpeg",
    ):
        _touch(root, rel)
    _touch(root, "train/NORMAL/.DS_Store")
    _touch(root, "train/NORMAL/notes.txt")
    _touch(root, "__MACOSX/train/NORMAL/._IM-0001-0001.jpeg")


def test_scan_split_label_file_tree(tmp_path):
    _kermany_like_tree(tmp_path)
    result = scan(tmp_path)
    assert result.layout == "split/label/file"
    assert result.parser == "kermany"
    assert len(result.rows) == 8
    assert [row["split"] for row in result.rows] == ["train"] * 6 + ["test"] * 2
    by_path = {row["path"]: row for row in result.rows}
    assert by_path["train/NORMAL/IM-0001-0002.jpeg"] == {
        "path": "train/NORMAL/IM-0001-0002.jpeg",
        "label": "NORMAL",
        "split": "train",
        "patient_id": "IM-0001",
    }
    assert by_path["train/NORMAL/NORMAL2-IM-0001-0001.jpeg"]["patient_id"] == "NORMAL2-IM-0001"
    assert by_path["test/PNEUMONIA/person3_virus_9.jpeg"]["label"] == "PNEUMONIA"
    assert any("1 non-image" in note for note in result.notes)


def test_scan_falls_back_to_generic_and_says_so(tmp_path):
    _touch(tmp_path, "train/A/scan1.png")
    _touch(tmp_path, "train/B/person1_virus_1.png")
    result = scan(tmp_path)
    assert result.parser == "generic"
    assert {row["patient_id"] for row in result.rows} == {"scan1", "person1_virus_1"}
    assert any("generic fallback" in note and "1 of 2" in note for note in result.notes)


def test_scan_explicit_parser_that_cannot_read_names_fails(tmp_path):
    _touch(tmp_path, "train/A/scan1.png")
    with pytest.raises(ManifestError, match="'kermany' patient-ID parser cannot read 1 of 1 .*scan1.png"):
        scan(tmp_path, dataset="kermany")


def test_scan_label_file_needs_a_split_policy(tmp_path):
    _touch(tmp_path, "A/x1.png")
    with pytest.raises(ManifestError, match="--split-policy"):
        scan(tmp_path)
    with pytest.raises(ManifestError, match="must be one of \\['all-train', 'patient-holdout'\\]"):
        scan(tmp_path, split_policy="holdout")


def test_scan_label_file_all_train(tmp_path):
    _touch(tmp_path, "A/x1.png")
    _touch(tmp_path, "B/sub/x2.PNG")
    result = scan(tmp_path, split_policy="all-train")
    assert result.layout == "label/file"
    assert [(row["path"], row["label"], row["split"]) for row in result.rows] == [
        ("A/x1.png", "A", "train"),
        ("B/sub/x2.PNG", "B", "train"),
    ]


def _patient_tree(root: Path, n_normal: int, n_pneumonia: int, images_per_patient: int = 3) -> None:
    patient = 0
    for label, count in (("NORMAL", n_normal), ("PNEUMONIA", n_pneumonia)):
        for _ in range(count):
            patient += 1
            for image in range(images_per_patient):
                if label == "NORMAL":
                    _touch(root, f"{label}/IM-{patient:04d}-{image + 1:04d}.jpeg")
                else:
                    _touch(root, f"{label}/person{patient}_bacteria_{image + 1}.jpeg")


def test_scan_patient_holdout_is_grouped_stratified_and_seeded(tmp_path):
    _patient_tree(tmp_path, n_normal=60, n_pneumonia=90, images_per_patient=2)
    result = scan(tmp_path, split_policy="patient-holdout", test_fraction=0.2, seed=3)
    splits_of = {}
    for row in result.rows:
        splits_of.setdefault(row["patient_id"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of.values())
    test_patients = {p for p, s in splits_of.items() if s == {"test"}}
    label_of = {row["patient_id"]: row["label"] for row in result.rows}
    # a hash draw per patient (the only rule under which adding patients moves none): about the fraction
    # overall, and every class on both sides
    assert 0.12 <= len(test_patients) / 150 <= 0.28
    for label in ("NORMAL", "PNEUMONIA"):
        assert 1 <= sum(label_of[p] == label for p in test_patients) < sum(v == label for v in label_of.values())
    again = scan(tmp_path, split_policy="patient-holdout", test_fraction=0.2, seed=3)
    assert again.rows == result.rows
    other = scan(tmp_path, split_policy="patient-holdout", test_fraction=0.2, seed=4)
    assert {r["patient_id"] for r in other.rows if r["split"] == "test"} != test_patients


def _test_patients(rows) -> set[str]:
    return {row["patient_id"] for row in rows if row["split"] == "test"}


def test_rescanning_after_adding_patients_moves_no_existing_image(tmp_path):
    """Issue 8, case 6: adding 3 patients used to move dozens of existing images between train and test."""
    _patient_tree(tmp_path, n_normal=40, n_pneumonia=60)
    before = {row["path"]: row["split"] for row in scan(tmp_path, split_policy="patient-holdout").rows}
    for patient in range(3):
        _touch(tmp_path, f"PNEUMONIA/person{900 + patient}_virus_1.jpeg")
    after = {row["path"]: row["split"] for row in scan(tmp_path, split_policy="patient-holdout").rows}
    assert len(after) == len(before) + 3
    moved = [path for path, split in before.items() if after[path] != split]
    assert moved == []
    n_patients, n_test = 100, len(_test_patients(scan(tmp_path, split_policy="patient-holdout").rows))
    assert 0.1 <= n_test / n_patients <= 0.3


def test_scan_and_stage_two_hold_out_the_same_patients(tmp_path):
    from featx.classify.evaluate import holdout_patients

    _patient_tree(tmp_path, n_normal=30, n_pneumonia=40)
    rows = scan(tmp_path, split_policy="patient-holdout", test_fraction=0.25, seed=5).rows
    classes = {"NORMAL": 0, "PNEUMONIA": 1}
    y = np.array([classes[row["label"]] for row in rows])
    groups = np.array([row["patient_id"] for row in rows])
    _, test = holdout_patients(y, groups, test_fraction=0.25, seed=5)
    assert set(groups[test]) == _test_patients(rows)


def test_scan_patient_holdout_rejects_bad_fraction(tmp_path):
    _patient_tree(tmp_path, 2, 2)
    with pytest.raises(ManifestError, match="test_fraction"):
        scan(tmp_path, split_policy="patient-holdout", test_fraction=1.5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "no sub-folders"),
        (lambda root: _touch(root, "train/A/x.txt"), "No images"),
        (lambda root: (_touch(root, "train/A/x.png"), _touch(root, "extra/A/y.png")), "mixes split folders"),
    ],
)
def test_scan_bad_trees(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(ManifestError, match=message):
        scan(tmp_path)


def test_scan_missing_root(tmp_path):
    with pytest.raises(ManifestError, match="is not a folder"):
        scan(tmp_path / "absent")


def test_scan_command_writes_manifest_and_prints_counts(tmp_path):
    root = tmp_path / "data"
    _kermany_like_tree(root)
    console, buffer = _console()
    scan_command(root, tmp_path / "m.csv", "auto", None, 0.2, 0, console)
    manifest = read_manifest(tmp_path / "m.csv")
    assert len(manifest) == 8
    output = buffer.getvalue()
    assert "Wrote 8 rows" in output
    assert "kermany" in output
    assert "featx manifest check" in output


# ---------------------------------------------------------------- check


def test_check_clean_manifest_counts(tmp_path):
    root = tmp_path / "data"
    _kermany_like_tree(root)
    write_manifest(scan(root).rows, tmp_path / "m.csv")
    report = check_manifest(tmp_path / "m.csv", root)
    assert report.ok, report.findings
    assert report.n_rows == 8
    assert report.classes == ("NORMAL", "PNEUMONIA")
    assert report.counts == {"train": {"NORMAL": 3, "PNEUMONIA": 3}, "test": {"NORMAL": 1, "PNEUMONIA": 1}}
    assert report.images_per_split == {"train": 6, "test": 2}
    assert report.patients_per_split == {"train": 4, "test": 2}
    console, buffer = _console()
    assert check_command(tmp_path / "m.csv", root, False, console) is True
    assert "No problems found" in buffer.getvalue()


def test_check_flags_every_problem(tmp_path):
    root = tmp_path / "data"
    for rel in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        _touch(root, rel, content=rel.encode())
    _touch(tmp_path, "outside.png")
    good_sha = hashlib.sha256(b"a.png").hexdigest()
    text = (
        "path,label,split,patient_id,sha256\n"
        f"a.png,A,train,p1,{good_sha}\n"  # ok
        f"b.png,B,train,p2,{'0' * 64}\n"  # sha mismatch
        "a.png,A,train,p1,\n"  # duplicate path
        "missing.png,B,train,p3,\n"  # missing file
        "../outside.png,A,train,p4,\n"  # escapes the root
        "c.png,A,tset,p5,\n"  # unknown split
        "d.png,A,test,p1,\n"  # p1 leaks train -> test; class B missing from test
        "e.png,,train,p6,\n"  # empty label
    )
    manifest = _write(tmp_path / "m.csv", text)
    report = check_manifest(manifest, root, verify_sha256=True)
    kinds = {finding.kind: finding for finding in report.findings}
    assert set(kinds) == {
        "duplicate_path",
        "missing_file",
        "escapes_root",
        "unknown_split",
        "empty_field",
        "missing_class",
        "patient_leakage",
        "sha256_mismatch",
    }
    assert kinds["duplicate_path"].examples == ("a.png",)
    assert kinds["missing_file"].examples == ("missing.png",)
    assert kinds["escapes_root"].examples == ("../outside.png",)
    assert "line 7" in kinds["unknown_split"].message and "did you mean 'test'" in kinds["unknown_split"].message
    assert "line 9" in kinds["empty_field"].message
    assert kinds["missing_class"].examples == ("test:B",)
    assert kinds["patient_leakage"].examples == ("p1",)
    assert "train+test 1" in kinds["patient_leakage"].message
    assert kinds["sha256_mismatch"].examples == ("b.png",)
    assert report.sha256_checked == 2
    assert not report.ok
    assert report.finding("patient_leakage") is kinds["patient_leakage"]

    console, buffer = _console()
    assert check_command(manifest, root, True, console) is False
    output = buffer.getvalue()
    for kind in kinds:
        assert kind in output


def test_check_without_sha_flag_does_not_hash(tmp_path):
    root = tmp_path / "data"
    _touch(root, "a.png")
    _write(tmp_path / "m.csv", f"path,label,split,patient_id,sha256\na.png,A,train,p1,{'0' * 64}\n")
    report = check_manifest(tmp_path / "m.csv", root)
    assert report.ok and report.sha256_checked == 0


def test_check_accepts_a_manifest_object(tmp_path):
    root = tmp_path / "data"
    _touch(root, "a.png")
    _write(tmp_path / "m.csv", "path,label,split,patient_id\na.png,A,train,p1\nb.png,A,train,p1\n")
    report = check_manifest(read_manifest(tmp_path / "m.csv"), root)
    assert [f.kind for f in report.findings] == ["missing_file"]


def test_check_missing_data_root(tmp_path):
    _write(tmp_path / "m.csv", "path,label,split,patient_id\na.png,A,train,p1\n")
    with pytest.raises(ManifestError, match="Data root .* is not a folder"):
        check_manifest(tmp_path / "m.csv", tmp_path / "absent")


def test_cli_check_strict_exit_codes(tmp_path, capsys):
    root = tmp_path / "data"
    _touch(root, "a.png")
    _write(tmp_path / "ok.csv", "path,label,split,patient_id\na.png,A,train,p1\n")
    _write(tmp_path / "bad.csv", "path,label,split,patient_id\nb.png,A,train,p1\n")
    assert main(["manifest", "check", str(tmp_path / "ok.csv"), "--data-root", str(root), "--strict"]) == 0
    assert main(["manifest", "check", str(tmp_path / "bad.csv"), "--data-root", str(root)]) == 0
    assert main(["manifest", "check", str(tmp_path / "bad.csv"), "--data-root", str(root), "--strict"]) == 2


def test_cli_bad_input_is_one_sentence_exit_2(tmp_path, capsys):
    _write(tmp_path / "m.csv", "path,label\na.png,A\n")
    assert main(["manifest", "check", str(tmp_path / "m.csv"), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featx: error: ") and "missing the column(s) ['split', 'patient_id']" in err
    assert "Traceback" not in err
    assert main(["manifest", "scan", str(tmp_path), "-o", str(tmp_path / "x.csv"), "--dataset", "kermani"]) == 2
    assert "did you mean 'kermany'" in capsys.readouterr().err


# ---------------------------------------------------------------- the shipped Kermany manifest


def test_file_list_builder(tmp_path):
    listing = _write(
        tmp_path / "files.csv",
        "path,label,split\n"
        "test/NORMAL/IM-0001-0001.jpeg,NORMAL,test\n"
        "train/PNEUMONIA/person7_virus_1.jpeg,PNEUMONIA,train\n"
        "train/NORMAL/NORMAL2-IM-0002-0001.jpeg,NORMAL,train\n",
    )
    rows = manifest_from_file_list(listing, dataset="kermany")
    assert [(r["path"], r["patient_id"], r["split"]) for r in rows] == [
        ("train/NORMAL/NORMAL2-IM-0002-0001.jpeg", "NORMAL2-IM-0002", "train"),
        ("train/PNEUMONIA/person7_virus_1.jpeg", "person7", "train"),
        ("test/NORMAL/IM-0001-0001.jpeg", "IM-0001", "test"),
    ]
    _write(tmp_path / "bad.csv", "path,label\nx,y\n")
    with pytest.raises(ManifestError, match="missing the column"):
        manifest_from_file_list(tmp_path / "bad.csv")


def test_shipped_kermany_manifest_is_valid_and_official():
    manifest = read_manifest(SHIPPED_KERMANY)
    assert len(manifest) == 5840
    assert manifest.classes == ("NORMAL", "PNEUMONIA")
    with SHIPPED_KERMANY.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = {}
    for row in rows:
        counts[(row["split"], row["label"])] = counts.get((row["split"], row["label"]), 0) + 1
        assert row["path"].startswith(f"{row['split']}/{row['label']}/")
        assert row["patient_id"] == PATIENT_PARSERS["kermany"](row["path"])
    assert counts == {
        ("train", "NORMAL"): 1341,
        ("train", "PNEUMONIA"): 3875,
        ("test", "NORMAL"): 234,
        ("test", "PNEUMONIA"): 390,
    }


@pytest.mark.realdata
def test_shipped_kermany_manifest_regenerates_byte_identical(tmp_path):
    if not SHARED_FILE_LIST.is_file():
        pytest.skip("../shared/data/kermany2018_files.csv is not present")
    out = write_manifest(manifest_from_file_list(SHARED_FILE_LIST, dataset="kermany"), tmp_path / "k.csv")
    assert out.read_bytes() == SHIPPED_KERMANY.read_bytes()


@pytest.mark.realdata
def test_shipped_kermany_manifest_against_real_train_images(kermany_train):
    report = check_manifest(SHIPPED_KERMANY, kermany_train.parent)
    kinds = {f.kind: f for f in report.findings}
    # The shared copy holds only the training images; the official test rows are absent there.
    assert kinds["missing_file"].count == 624
    assert all(example.startswith("test/") for example in kinds["missing_file"].examples)
    # The official split is kept as published; name-derived patients that span it are flagged, not hidden.
    leakage = kinds["patient_leakage"]
    with SHIPPED_KERMANY.open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    def name_patient(path: str) -> str:  # string surgery, independent of the parser's regular expressions
        name = path.rsplit("/", 1)[-1]
        if name.startswith("person"):
            return name.split("_")[0]
        family, _, rest = name.partition("IM-")
        return f"{family}IM-{rest.split('-')[0]}"

    train = {name_patient(r["path"]) for r in rows if r["split"] == "train"}
    test = {name_patient(r["path"]) for r in rows if r["split"] == "test"}
    assert len(train) == 2846
    assert leakage.count == len(train & test) > 0
    assert all(example.startswith("person") for example in leakage.examples)
    assert set(kinds) == {"missing_file", "patient_leakage"}
    assert report.patients_per_split["train"] == 2846


@pytest.mark.realdata
def test_scan_real_kermany_train(kermany_train, tmp_path):
    result = scan(kermany_train.parent)
    assert result.parser == "kermany"
    assert len(result.rows) == 5216
    assert len({row["patient_id"] for row in result.rows}) == 2846
    assert {row["split"] for row in result.rows} == {"train"}
    shipped_train = [r for r in csv.DictReader(SHIPPED_KERMANY.open(newline="")) if r["split"] == "train"]
    assert sorted((r["path"], r["patient_id"]) for r in shipped_train) == sorted(
        (r["path"], r["patient_id"]) for r in result.rows
    )


@pytest.mark.parametrize(
    "text, line",
    [
        ('path,label,split,patient_id\n"a.png,A,train,p1\nb.png,B,test,p2\n', 2),
        ('path,label,split,patient_id\na.png,A,train,p1\nb.png,"B,test,p2\nc.png,B,test,p3\n', 3),
        ('path,label,split,patient_id\na.png,A,train,p1\nb.png,B,test,"p2', 3),
    ],
)
def test_an_unterminated_quote_is_named_with_its_line(tmp_path, text, line, capsys):
    """Issue 8, case 13: a quote never closed swallowed the following lines and was reported as an empty label."""
    file = _write(tmp_path / "m.csv", text)
    with pytest.raises(ManifestError, match=f"line {line} opens a quoted field .* never closed"):
        read_manifest(file)
    assert main(["manifest", "check", str(file), "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"line {line} opens a quoted field" in err and len(err.splitlines()) == 1
