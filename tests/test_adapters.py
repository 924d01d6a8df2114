"""Dataset adapters (RSNA Pneumonia, CheXpert, MIMIC-CXR-JPG) on fake release trees; each output checks clean."""

from __future__ import annotations

import io
import re
from collections import Counter
from pathlib import Path

import pytest
from releases import chexpert_release, mimic_release, rsna_release
from rich.console import Console

from featx.cli import build_parser, main
from featx.data.adapters import ADAPTERS
from featx.data.adapters.chexpert import chexpert_manifest_rows, parse_uncertain
from featx.data.adapters.mimic import mimic_manifest_rows
from featx.data.manifest import check_manifest, read_manifest
from featx.errors import ManifestError


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200), buffer


def _clean(manifest: Path, root: Path):
    report = check_manifest(manifest, root)
    assert report.ok, [finding.message for finding in report.findings]
    return read_manifest(manifest)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_has_a_manifest_action_with_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["manifest", name, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert ADAPTERS[name].title.split(" (")[0] in " ".join(text.split())


# ---------------------------------------------------------------- RSNA


@pytest.fixture
def rsna(tmp_path):
    pytest.importorskip("pydicom")
    return rsna_release(tmp_path / "rsna-pneumonia-detection-challenge")


def test_rsna_any_box_manifest_is_clean_with_a_patient_holdout(rsna, tmp_path, capsys):
    root, classes = rsna
    code = main(["manifest", "rsna", "--root", str(root), "-o", str(tmp_path / "rsna.csv")])
    assert code == 0
    output = capsys.readouterr().out
    assert "No problems found" in output
    n_test = int(re.search(r"(\d+) of 12 patients held out", " ".join(output.split())).group(1))
    manifest = _clean(tmp_path / "rsna.csv", root)
    assert manifest.classes == ("negative", "Lung Opacity") and not manifest.multilabel
    assert len(manifest) == 12 and all(path.startswith("stage_2_train_images/") for path in manifest.paths)
    by_patient = {
        pid: (labels, split) for pid, labels, split in zip(manifest.patient_ids, manifest.labels, manifest.splits)
    }
    assert set(by_patient) == set(classes)
    for patient, name in classes.items():
        assert by_patient[patient][0] == (("Lung Opacity",) if name == "Lung Opacity" else ("negative",))
    test_classes = Counter(classes[p] for p, (_, split) in by_patient.items() if split == "test")
    # each patient by a seeded hash of its id (data.holdout): every class keeps patients on both sides
    assert sum(test_classes.values()) == n_test and set(test_classes) == set(classes.values())
    assert all(1 <= n < 4 for n in test_classes.values())
    assert Counter(manifest.meta["sex"]) == {"M": 6, "F": 6} and set(manifest.meta["view"]) == {"PA", "AP"}
    assert sorted(set(manifest.meta["age"])) == ["30", "37", "44", "51"]


def test_rsna_three_way_class_and_seeded_split(rsna, tmp_path):
    root, _ = rsna
    console, _ = _console()
    from featx.data.adapters.rsna import rsna_manifest_command, rsna_manifest_rows

    rsna_manifest_command(root, tmp_path / "a.csv", "class", 0.25, 3, console)
    manifest = _clean(tmp_path / "a.csv", root)
    assert manifest.classes == ("Normal", "Lung Opacity", "No Lung Opacity / Not Normal")
    again, _ = rsna_manifest_rows(root, "class", 0.25, 3)
    assert [row["split"] for row in again] == list(manifest.splits)


def test_rsna_box_and_class_files_must_agree(rsna):
    root, classes = rsna
    normal = next(p for p, name in classes.items() if name == "Normal")
    labels = root / "stage_2_train_labels.csv"
    labels.write_text(labels.read_text().replace(f"{normal},,,,,0", f"{normal},1.0,2.0,3.0,4.0,1"))
    from featx.data.adapters.rsna import rsna_manifest_rows

    with pytest.raises(ManifestError, match=r"1 patient\(s\) have a box in stage_2_train_labels.csv but another class"):
        rsna_manifest_rows(root)


def test_rsna_missing_images_are_counted(rsna):
    root, classes = rsna
    for patient in list(classes)[:2]:
        (root / "stage_2_train_images" / f"{patient}.dcm").unlink()
    from featx.data.adapters.rsna import rsna_manifest_rows

    with pytest.raises(ManifestError, match=r"^2 of the 12 DICOM images of stage_2_train_labels.csv are not under"):
        rsna_manifest_rows(root)


# ---------------------------------------------------------------- CheXpert


def test_chexpert_multilabel_manifest_is_clean(tmp_path):
    root = chexpert_release(tmp_path)
    code = main(
        [
            "manifest",
            "chexpert",
            "--root",
            str(root),
            "-o",
            str(tmp_path / "cx.csv"),
            "--labels",
            "Edema,Pleural Effusion",
            "--view",
            "frontal",
        ]
    )
    assert code == 0
    manifest = _clean(tmp_path / "cx.csv", root)
    assert manifest.classes == ("negative", "Edema", "Pleural Effusion") and manifest.multilabel
    rows = {
        path: (labels, split, pid)
        for path, labels, split, pid in zip(manifest.paths, manifest.labels, manifest.splits, manifest.patient_ids)
    }
    assert rows["train/patient00001/study1/view1_frontal.jpg"] == (
        ("Edema", "Pleural Effusion"),
        "train",
        "patient00001",
    )
    assert rows["train/patient00004/study1/view1_frontal.jpg"][0] == ("negative",)  # Edema -1 -> zeros (default)
    assert rows["valid/patient64543/study1/view1_frontal.jpg"][1:] == ("test", "patient64543")
    assert not any("lateral" in path for path in rows)
    meta = dict(zip(manifest.paths, zip(manifest.meta["sex"], manifest.meta["age"], manifest.meta["view"])))
    assert meta["train/patient00002/study1/view1_frontal.jpg"] == ("M", "44", "PA")
    assert meta["train/patient00004/study1/view1_frontal.jpg"] == ("", "0", "PA")
    assert set(manifest.meta["frontal_lateral"]) == {"frontal"}


def test_chexpert_uncertain_policies_and_views(tmp_path):
    root = chexpert_release(tmp_path)

    def labels(**options):
        rows, notes = chexpert_manifest_rows(root, **options)
        return {row["path"]: row["label"] for row in rows}, notes

    ones, _ = labels(labels="Edema", uncertain="ones")
    assert ones["train/patient00004/study1/view1_frontal.jpg"] == ("Edema",)
    ignored, notes = labels(labels="Edema", uncertain="ignore")
    assert "train/patient00004/study1/view1_frontal.jpg" not in ignored and len(ignored) == len(ones) - 1
    assert any("left out 1 image(s) with an uncertain ignored label (Edema 1)" in note for note in notes)
    per_label, _ = labels(labels="Edema,Atelectasis", uncertain="Atelectasis=ones,ignore")
    assert per_label["train/patient00003/study1/view1_frontal.jpg"] == ("Atelectasis",)
    assert "train/patient00004/study1/view1_frontal.jpg" not in per_label
    lateral, _ = labels(labels="Edema", view="lateral")
    assert list(lateral) == ["train/patient00001/study1/view2_lateral.jpg"]
    rows, _ = chexpert_manifest_rows(root, labels="Edema", view="lateral")
    assert (rows[0]["view"], rows[0]["frontal_lateral"]) == ("LATERAL", "lateral")
    assert parse_uncertain("published", ("Atelectasis", "Cardiomegaly", "Edema")) == {
        "Atelectasis": "ones",
        "Cardiomegaly": "zeros",
        "Edema": "ones",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": "Edemaa"}, r"'labels' parameter must be one of .* did you mean 'Edema'"),
        ({"uncertain": "U-Ones"}, r"'uncertain' parameter must be one of \['zeros', 'ones', 'ignore', 'published'\]"),
        (
            {"labels": "Edema", "uncertain": "Atelectasis=ones"},
            r"'uncertain label' parameter must be one of \['Edema'\]",
        ),
        ({"view": "front"}, r"'view' parameter must be one of \['all', 'frontal', 'lateral'\]"),
    ],
)
def test_chexpert_bad_options_are_one_sentence(tmp_path, options, message):
    root = chexpert_release(tmp_path)
    with pytest.raises(ManifestError, match=message):
        chexpert_manifest_rows(root, **options)


def test_chexpert_bad_cell_names_file_line_and_column(tmp_path, capsys):
    root = chexpert_release(tmp_path)
    text = (root / "valid.csv").read_text().splitlines()
    text[2] = text[2].replace(",1.0,", ",yes,", 1)
    (root / "valid.csv").write_text("\n".join(text) + "\n")
    assert main(["manifest", "chexpert", "--root", str(root), "-o", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "valid.csv' line 3, column 'No Finding': 'yes' is not a CheXpert label value" in err
    assert "Traceback" not in err and not (tmp_path / "x.csv").exists()


def test_chexpert_missing_image(tmp_path):
    root = chexpert_release(tmp_path)
    (root / "valid" / "patient64543" / "study1" / "view1_frontal.jpg").unlink()
    with pytest.raises(ManifestError, match=r"^1 of the 10 images listed in train.csv/valid.csv are not under"):
        chexpert_manifest_rows(root)


# ---------------------------------------------------------------- MIMIC-CXR-JPG


def test_mimic_binary_manifest_is_clean_with_the_official_split(tmp_path):
    root = mimic_release(tmp_path / "mimic-cxr-jpg" / "2.0.0")
    console, buffer = _console()
    from featx.data.adapters.mimic import mimic_manifest_command

    mimic_manifest_command(root, tmp_path / "mimic.csv", "Edema", "zeros", "frontal", "chexpert", console)
    manifest = _clean(tmp_path / "mimic.csv", root)
    assert manifest.classes == ("negative", "Edema")
    assert Counter(manifest.splits) == {"train": 4, "val": 2, "test": 2}
    assert set(manifest.meta["view"]) == {"PA", "AP"} and set(manifest.meta) == {"view"}
    first = manifest.paths.index("files/p10/p10000032/s50414267/00000000-00000000-bde0afdd-112c0b34-7bc16630.jpg")
    assert (manifest.labels[first], manifest.patient_ids[first]) == (("Edema",), "10000032")
    output = " ".join(buffer.getvalue().split())
    assert "left out 3 image(s) of other views (LATERAL 2, LL 1)" in output
    assert "Left out 1 image(s) of studies the chexpert label file does not list" in output


def test_mimic_views_uncertain_and_labeller(tmp_path):
    root = mimic_release(tmp_path / "2.0.0")
    every, _ = mimic_manifest_rows(root, labels="Edema", view="all", labeller="negbio")
    assert len(every) == 10 and {row["view"] for row in every} == {"PA", "AP", "LATERAL"}
    lateral, _ = mimic_manifest_rows(root, labels="Edema", view="LATERAL,LL")
    assert len(lateral) == 2
    ignored, notes = mimic_manifest_rows(root, labels="Edema", uncertain="ignore")
    assert len(ignored) == len(every) - 1
    assert any("1 image(s) of studies with an uncertain ignored label (Edema 1 studies)" in note for note in notes)


def test_mimic_missing_release_file_says_what_to_pass(tmp_path, capsys):
    root = mimic_release(tmp_path / "2.0.0")
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    assert main(["manifest", "mimic", "--root", str(root), "-o", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert "The split file ('mimic-cxr-2.0.0-split.csv.gz' or 'mimic-cxr-2.0.0-split.csv') is not in" in err
