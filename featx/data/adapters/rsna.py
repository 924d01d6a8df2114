"""RSNA Pneumonia Detection Challenge (Shih et al. 2019): DICOM images, box labels, a patient-grouped hold-out.

stage_2_train_labels.csv has one row per box (patientId, x, y, width, height,
Target; Target 0 rows have no box), so an image is positive ("Lung Opacity") when
it has any box; stage_2_detailed_class_info.csv gives the three-way class (Normal,
No Lung Opacity / Not Normal, Lung Opacity), the alternative --label class. The
challenge's test labels were never released, so the test split is a patient-grouped
hold-out (featx.data.holdout) stratified by the three-way class. Sex, age and view
come from each DICOM header. The images are stage_2_train_images/<patientId>.dcm
under the release folder, which is also the data root.
"""

from __future__ import annotations

from pathlib import Path

from featx.data.adapters.common import (
    NEGATIVE,
    check_present,
    first,
    metadata_notes,
    read_table,
    release_file,
    release_folder,
    sort_rows,
    write_and_check,
)
from featx.data.holdout import holdout_patients
from featx.errors import ManifestError, one_of_message
from featx.progress import track

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
IMAGES_DIR = "stage_2_train_images"
POSITIVE = "Lung Opacity"
CLASSES = ("Normal", "No Lung Opacity / Not Normal", POSITIVE)
LABEL_MODES = ("any-box", "class")
RELEASE = "RSNA Pneumonia Detection Challenge (rsna-pneumonia-detection-challenge)"


def _targets(table) -> dict[str, int]:
    """patientId -> 1 when any of its rows has Target 1 (a box), else 0."""
    targets: dict[str, int] = {}
    for line, record in table.records:
        target = record["Target"]
        if target not in ("0", "1"):
            raise ManifestError(f"'{table.path}' line {line}, column 'Target': must be 0 or 1. Got {target!r} instead.")
        patient = record["patientId"]
        if not patient:
            raise ManifestError(f"'{table.path}' line {line}, column 'patientId': is empty.")
        targets[patient] = max(targets.get(patient, 0), int(target))
    return targets


def _classes(table) -> dict[str, str]:
    """patientId -> its three-way class (the file repeats a patient once per box row, always with one class)."""
    classes: dict[str, str] = {}
    for line, record in table.records:
        patient, name = record["patientId"], record["class"]
        if name not in CLASSES:
            raise ManifestError(
                f"'{table.path}' line {line}, column 'class': must be one of {list(CLASSES)}. Got {name!r} instead."
            )
        if classes.setdefault(patient, name) != name:
            raise ManifestError(
                f"'{table.path}' line {line}: patient {patient!r} has the classes {classes[patient]!r} and {name!r}; "
                "an image has one."
            )
    return classes


def rsna_manifest_rows(
    root, label: str = "any-box", test_fraction: float = 0.2, seed: int = 0, console=None
) -> tuple[list[dict], list[str]]:
    """(manifest rows, notes) for the RSNA release folder; ManifestError for anything that does not fit."""
    from featx.data.dicom import DicomReadError, read_header

    root = release_folder(root, "RSNA", RELEASE)
    if label not in LABEL_MODES:
        raise ManifestError(one_of_message("label", label, LABEL_MODES))
    boxes = read_table(
        release_file(root, (LABELS_FILE,), "box label file", RELEASE),
        ("patientId", "x", "y", "width", "height", "Target"),
        "RSNA box label file",
    )
    info = read_table(
        release_file(root, (CLASS_FILE,), "class file", RELEASE), ("patientId", "class"), "RSNA class file"
    )
    targets, classes = _targets(boxes), _classes(info)
    for only, other, what in (
        (set(targets) - set(classes), CLASS_FILE, LABELS_FILE),
        (set(classes) - set(targets), LABELS_FILE, CLASS_FILE),
    ):
        if only:
            raise ManifestError(
                f"{len(only):,} patient(s) of {what} are not in {other} ({first(sorted(only))}); "
                "both files must come from the same release."
            )
    disagree = sorted(p for p in targets if (classes[p] == POSITIVE) != bool(targets[p]))
    if disagree:
        raise ManifestError(
            f"{len(disagree):,} patient(s) have a box in {LABELS_FILE} but another class than {POSITIVE!r} in "
            f"{CLASS_FILE}, or the reverse ({first(disagree)})."
        )
    patients = sorted(targets)
    paths = {patient: f"{IMAGES_DIR}/{patient}.dcm" for patient in patients}
    check_present(root, list(paths.values()), f"DICOM images of {LABELS_FILE}")
    test = holdout_patients(classes, test_fraction, seed)

    rows, unreadable = [], []
    for patient in track(patients, len(patients), "DICOM headers", console):
        try:
            header = read_header(root / paths[patient])
        except DicomReadError as error:
            header = {}
            unreadable.append(f"{paths[patient]}: {error}")
        rows.append(
            {
                "path": paths[patient],
                "label": (POSITIVE if targets[patient] else NEGATIVE) if label == "any-box" else classes[patient],
                "split": "test" if patient in test else "train",
                "patient_id": patient,
                "sex": header.get("sex", ""),
                "age": header.get("age", ""),
                "view": header.get("view", ""),
            }
        )
    notes = [
        f"label {label}: "
        + (
            "'Lung Opacity' when the image has any box, else 'negative'."
            if label == "any-box"
            else "the three-way class."
        ),
        f"test split: {len(test):,} of {len(patients):,} patients held out (fraction {test_fraction}, stratified by "
        f"the three-way class, seed {seed}); the challenge's own test labels were never released.",
    ]
    if unreadable:
        notes.append(
            f"{len(unreadable):,} DICOM header(s) could not be read (first: {unreadable[0]}); no metadata for them."
        )
    notes += metadata_notes(rows, ("sex", "age", "view"))
    return sort_rows(rows), notes


def rsna_manifest_command(root, out, label, test_fraction, seed, console) -> bool:
    """`featx manifest rsna`: write the manifest, print its counts, notes and `featx manifest check`."""
    rows, notes = rsna_manifest_rows(root, label, test_fraction, seed, console)
    return write_and_check(rows, out, Path(root), "RSNA Pneumonia manifest", notes, console)
