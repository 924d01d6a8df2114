"""Small fake copies of public chest X-ray releases, laid out file for file like the real downloads."""

from __future__ import annotations

import csv
import gzip
import io
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from featx.data.adapters.chexpert import CHEXPERT_LABELS

# the 14 columns of the CheXpert labeller, in the release's order (the tests name the labels they check literally)
CHEXPERT_OBSERVATIONS = CHEXPERT_LABELS
# the labeller file of MIMIC-CXR-JPG orders the same observations alphabetically
MIMIC_OBSERVATIONS = tuple(sorted(CHEXPERT_OBSERVATIONS))


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format="JPEG")


def _csv_text(header, rows) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------- RSNA Pneumonia Detection Challenge

RSNA_CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")


def rsna_release(root: Path, per_class: int = 4, seed: int = 0) -> tuple[Path, dict[str, str]]:
    """root/ as unpacked from Kaggle; returns (root, patientId -> three-way class).

    stage_2_train_labels.csv has one row per box (Lung Opacity patients get two boxes
    on alternate patients; other rows have empty box fields), the class file repeats a
    patient once per box row, and every image is stage_2_train_images/<patientId>.dcm.
    """
    from dicomfactory import write_dicom

    rng = np.random.default_rng(seed)
    classes, box_rows, class_rows = {}, [], []
    for k, name in enumerate(RSNA_CLASSES):
        for i in range(per_class):
            patient = str(uuid.UUID(int=int(rng.integers(0, 2**62)) * 4 + k))
            classes[patient] = name
            n_boxes = (1 + i % 2) if name == "Lung Opacity" else 1
            for _ in range(n_boxes):
                if name == "Lung Opacity":
                    box_rows.append([patient, "264.0", "152.0", "213.0", "379.0", "1"])
                else:
                    box_rows.append([patient, "", "", "", "", "0"])
                class_rows.append([patient, name])
            sex = "F" if i % 2 else "M"
            write_dicom(
                root / "stage_2_train_images" / f"{patient}.dcm",
                rng.integers(0, 256, (8, 8), dtype=np.uint8),
                patient_id=patient,
                sex=sex,
                age=str(30 + 7 * i),
                view="PA" if i < 2 else "AP",
            )
    write_dicom(root / "stage_2_test_images" / "00000000-unlabelled.dcm", np.zeros((8, 8), dtype=np.uint8))
    (root / "stage_2_train_labels.csv").write_text(
        _csv_text(["patientId", "x", "y", "width", "height", "Target"], box_rows)
    )
    (root / "stage_2_detailed_class_info.csv").write_text(_csv_text(["patientId", "class"], class_rows))
    (root / "stage_2_sample_submission.csv").write_text("patientId,PredictionString\n00000000-unlabelled,\n")
    (root / "GCP Credits Request Link - RSNA.txt").write_text("https://example.invalid\n")
    return root, classes


# ---------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)


def chexpert_row(
    release: str, split: str, patient: int, study: int, view: int, lateral=False, sex="Female", age=60, **labels
):
    """One train.csv/valid.csv row; labels as keyword arguments with '_' for ' ' (Pleural_Effusion=-1.0)."""
    path = f"{release}/{split}/patient{patient:05d}/study{study}/view{view}_{'lateral' if lateral else 'frontal'}.jpg"
    values = {name.replace(" ", "_"): "" for name in CHEXPERT_OBSERVATIONS}
    values.update({key: ("" if value is None else f"{float(value):.1f}") for key, value in labels.items()})
    frontal = "Lateral" if lateral else "Frontal"
    ap_pa = "" if lateral else ("AP" if patient % 2 else "PA")
    return [path, sex, str(age), frontal, ap_pa, *(values[name.replace(" ", "_")] for name in CHEXPERT_OBSERVATIONS)]


def chexpert_release(parent: Path, release: str = "CheXpert-v1.0-small") -> Path:
    """parent/<release>/{train.csv, valid.csv, train/, valid/}; returns the release folder.

    Every split holds Edema-positive and Edema-negative frontal images and Pleural Effusion
    positives; patient 4 has an uncertain Edema, patient 5 a lateral view.
    """
    train = [
        chexpert_row(release, "train", 1, 1, 1, Edema=1, Pleural_Effusion=1),
        chexpert_row(release, "train", 1, 1, 2, lateral=True, Edema=1, Pleural_Effusion=1),
        chexpert_row(release, "train", 2, 1, 1, sex="Male", age=44, No_Finding=1, Edema=0),
        chexpert_row(release, "train", 3, 1, 1, sex="Male", age=81, Pleural_Effusion=1, Atelectasis=-1),
        chexpert_row(release, "train", 3, 2, 1, sex="Male", age=81, Edema=1),
        chexpert_row(release, "train", 4, 1, 1, sex="Unknown", age=0, Edema=-1, Pleural_Effusion=0),
        chexpert_row(release, "train", 5, 1, 1, Support_Devices=1),
    ]
    valid = [
        chexpert_row(release, "valid", 64541, 1, 1, Edema=1, Pleural_Effusion=1),
        chexpert_row(release, "valid", 64542, 1, 1, sex="Male", No_Finding=1, Edema=0, Pleural_Effusion=0),
        chexpert_row(release, "valid", 64543, 1, 1, Pleural_Effusion=1),
    ]
    for k, row in enumerate(train + valid):
        _jpeg(parent / row[0], k)
    root = parent / release
    (root / "train.csv").write_text(_csv_text(CHEXPERT_HEADER, train))
    (root / "valid.csv").write_text(_csv_text(CHEXPERT_HEADER, valid))
    return root


# ---------------------------------------------------------------- MIMIC-CXR-JPG

MIMIC_METADATA_HEADER = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)


def _gz(path: Path, text: str) -> None:
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


def mimic_release(root: Path) -> Path:
    """root/ = mimic-cxr-jpg/2.0.0 with the gzipped metadata, chexpert, negbio and split CSVs and files/p1x/...

    (subject, study, split, Edema value, views): each split has Edema-positive and negative studies; one study has
    an uncertain Edema, one study is missing from the labeller file, and there are lateral views.
    """
    studies = [
        ("10000032", "50414267", "train", 1.0, ("PA", "LATERAL")),
        ("10000032", "53189527", "train", 0.0, ("AP",)),
        ("10000764", "57375967", "train", -1.0, ("AP",)),
        ("10000898", "50771383", "train", None, ("PA",)),  # not mentioned: negative
        ("10000935", "51178377", "train", None, ("PA", "LL")),  # the labeller file does not list it
        ("10001176", "53186264", "validate", 1.0, ("AP",)),
        ("10001217", "52067803", "validate", 0.0, ("PA",)),
        ("11000566", "54465236", "test", 1.0, ("AP", "LATERAL")),
        ("11001469", "56115047", "test", 0.0, ("PA",)),
    ]
    metadata, split_rows, label_rows = [], [], []
    for k, (subject, study, split, edema, views) in enumerate(studies):
        for v, position in enumerate(views):
            dicom_id = f"{k:08x}-{v:08x}-bde0afdd-112c0b34-7bc16630"
            metadata.append(
                [
                    dicom_id,
                    subject,
                    study,
                    "CHEST (PA AND LAT)",
                    position,
                    "3056",
                    "2544",
                    "21800506",
                    "213014.531",
                    "CHEST (PA AND LAT)",
                    "postero-anterior",
                    "Erect",
                ]
            )
            split_rows.append([dicom_id, study, subject, split])
            _jpeg(root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg", k * 10 + v)
        if study != "51178377":
            values = dict.fromkeys(MIMIC_OBSERVATIONS, "")
            values["Edema"] = "" if edema is None else f"{edema:.1f}"
            values["No Finding"] = "1.0" if edema == 0.0 else ""
            label_rows.append([subject, study, *(values[name] for name in MIMIC_OBSERVATIONS)])
    root.mkdir(parents=True, exist_ok=True)
    _gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", _csv_text(MIMIC_METADATA_HEADER, metadata))
    _gz(root / "mimic-cxr-2.0.0-split.csv.gz", _csv_text(("dicom_id", "study_id", "subject_id", "split"), split_rows))
    labeller_text = _csv_text(("subject_id", "study_id", *MIMIC_OBSERVATIONS), label_rows)
    _gz(root / "mimic-cxr-2.0.0-chexpert.csv.gz", labeller_text)
    _gz(root / "mimic-cxr-2.0.0-negbio.csv.gz", labeller_text)
    (root / "LICENSE.txt").write_text("PhysioNet Credentialed Health Data License 1.5.0\n")
    return root
