"""MIMIC-CXR-JPG 2.0 (Johnson et al. 2019): metadata, CheXpert-labeller and split CSVs; subject_id is the patient.

Images live at files/p<first two digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg
under the release folder, which is also the data root. Labels are per study (every
image of a study shares them) and use the CheXpert labeller's values, resolved by
the same --labels and --uncertain as CheXpert. The official split's `validate`
becomes featx's `val`. --view filters on ViewPosition: frontal (PA, AP), lateral
(LATERAL, LL), all, or a comma list of ViewPosition values. Images of studies the
labeller file does not list are left out (counted in the notes).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from featx.data.adapters.chexpert import ignored_note, labelling_notes, parse_labels, parse_uncertain, resolve_labels
from featx.data.adapters.common import (
    check_present,
    first,
    metadata_notes,
    read_table,
    release_file,
    release_folder,
    sort_rows,
    write_and_check,
)
from featx.errors import ManifestError, one_of_message

PREFIX = "mimic-cxr-2.0.0-"
LABELLERS = ("chexpert", "negbio")
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
VIEW_GROUPS = {"frontal": ("PA", "AP"), "lateral": ("LATERAL", "LL")}
RELEASE = "mimic-cxr-jpg/2.0.0"


def _release_table(root: Path, kind: str, what: str, required: tuple[str, ...]):
    """The release's mimic-cxr-2.0.0-<kind>.csv.gz (or .csv) with the `required` columns."""
    path = release_file(root, (f"{PREFIX}{kind}.csv.gz", f"{PREFIX}{kind}.csv"), what, RELEASE)
    return read_table(path, required, f"MIMIC-CXR {what}")


def parse_view(text: str) -> tuple[str, ...] | None:
    """None for 'all'; the ViewPosition values to keep for 'frontal', 'lateral' or a comma list."""
    text = (text or "").strip()
    if text == "all":
        return None
    if text in VIEW_GROUPS:
        return VIEW_GROUPS[text]
    values = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    if not values:
        raise ManifestError(one_of_message("view", text, ["all", *VIEW_GROUPS, "PA,AP,..."]))
    return values


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def mimic_manifest_rows(
    root, labels: str = "all", uncertain: str = "zeros", view: str = "all", labeller: str = "chexpert"
) -> tuple[list[dict], list[str]]:
    """(manifest rows, notes) for a MIMIC-CXR-JPG release folder; ManifestError for anything that does not fit."""
    root = release_folder(root, "MIMIC-CXR-JPG", RELEASE)
    chosen = parse_labels(labels)
    policies = parse_uncertain(uncertain, chosen)
    keep_views = parse_view(view)
    if labeller not in LABELLERS:
        raise ManifestError(one_of_message("labeller", labeller, LABELLERS))

    metadata = _release_table(root, "metadata", "metadata file", ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    split_table = _release_table(root, "split", "split file", ("dicom_id", "study_id", "subject_id", "split"))
    label_table = _release_table(root, labeller, f"{labeller} label file", ("subject_id", "study_id", *chosen))

    split_of = {}
    for line, record in split_table.records:
        split = SPLIT_NAMES.get(record["split"])
        if split is None:
            raise ManifestError(
                f"'{split_table.path}' line {line}, column 'split': must be one of {list(SPLIT_NAMES)}. "
                f"Got {record['split']!r} instead."
            )
        split_of[record["dicom_id"]] = split
    study_labels, ignored_studies, ignored = {}, set(), Counter()
    for line, record in label_table.records:
        row_labels, row_ignored = resolve_labels(record, chosen, policies, f"'{label_table.path}' line {line}")
        if row_labels is None:
            ignored_studies.add(record["study_id"])
            ignored.update(row_ignored)
        else:
            study_labels[record["study_id"]] = row_labels

    rows, unsplit, unlabelled, dropped_ignored, other_view = [], [], 0, 0, Counter()
    for _, record in metadata.records:
        position = record["ViewPosition"].upper()
        if keep_views is not None and position not in keep_views:
            other_view[position or "(blank)"] += 1
            continue
        study = record["study_id"]
        if study in ignored_studies:
            dropped_ignored += 1
            continue
        if study not in study_labels:
            unlabelled += 1
            continue
        split = split_of.get(record["dicom_id"])
        if split is None:
            unsplit.append(record["dicom_id"])
            continue
        rows.append(
            {
                "path": image_path(record["subject_id"], study, record["dicom_id"]),
                "label": study_labels[study],
                "split": split,
                "patient_id": record["subject_id"],
                "view": position,
            }
        )
    if unsplit:
        raise ManifestError(
            f"{len(unsplit):,} image(s) of '{metadata.path}' are not in '{split_table.path}' ({first(unsplit)}); "
            "the CSVs must come from the same release."
        )
    if not rows:
        raise ManifestError(f"No MIMIC-CXR image under '{root}' is left after --view {view} and the label filters.")
    check_present(root, [row["path"] for row in rows], "images listed in the metadata file")
    notes = [*labelling_notes(chosen, policies, labeller), "official split: train, validate -> val, test."]
    if other_view:
        notes.append(
            f"--view {view}: left out {sum(other_view.values()):,} image(s) of other views ("
            + ", ".join(f"{name} {n:,}" for name, n in other_view.most_common(5))
            + ")."
        )
    if unlabelled:
        notes.append(f"Left out {unlabelled:,} image(s) of studies the {labeller} label file does not list.")
    if dropped_ignored:
        notes.append(ignored_note(dropped_ignored, ignored, per_study=True))
    notes += metadata_notes(rows, ("view",))
    return sort_rows(rows), notes


def mimic_manifest_command(root, out, labels, uncertain, view, labeller, console) -> bool:
    """`featx manifest mimic`: write the manifest, print its counts, notes and `featx manifest check`."""
    rows, notes = mimic_manifest_rows(root, labels, uncertain, view, labeller)
    return write_and_check(rows, out, Path(root), "MIMIC-CXR-JPG manifest", notes, console)
