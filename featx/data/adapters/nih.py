"""NIH ChestX-ray14 (Wang et al. 2017): Data_Entry_2017.csv and the official train_val / test lists.

A multi-label manifest ("No Finding" is a label of its own), the official split,
the CSV's Patient ID, and the metadata columns age, sex and view from its
Patient Age, Patient Gender and View Position (where the CSV has them). Images are
found by name anywhere under --images (the release's images_0NN/images folders).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from featx.data.adapters.common import first as _first
from featx.data.adapters.common import metadata_notes, read_table
from featx.data.dicom import parse_age
from featx.data.manifest import LABEL_SEPARATOR, SPLITS, check_manifest, order_classes, write_manifest
from featx.errors import ManifestError
from featx.files import walk_files

NIH_FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NIH_NO_FINDING = "No Finding"
NIH_LABELS = (NIH_NO_FINDING, *NIH_FINDINGS)
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
# metadata column -> the optional Data_Entry_2017.csv column it comes from
NIH_META = {"sex": "Patient Gender", "age": "Patient Age", "view": "View Position"}


def _read_list(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise ManifestError(f"The {what} '{path}' does not exist; pass the file from the NIH ChestX-ray14 release.")
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    return [name for name in names if name]


def _nih_meta(record: dict) -> dict[str, str]:
    """sex (M/F), age (years) and view (PA/AP) of one CSV row; '' where the CSV has no such column or value."""
    sex = (record.get(NIH_META["sex"]) or "").strip().upper()
    return {
        "sex": sex if sex in ("M", "F") else "",
        "age": parse_age(record.get(NIH_META["age"])),
        "view": (record.get(NIH_META["view"]) or "").strip().upper(),
    }


def _read_nih_entries(entries: Path) -> list[tuple[str, tuple[str, ...], str, dict[str, str]]]:
    """(image name, labels, patient id, metadata) per row of Data_Entry_2017.csv; ManifestError names line and column."""
    table = read_table(entries, NIH_COLUMNS, "NIH entries file (Data_Entry_2017.csv)")
    records = []
    seen: dict[str, int] = {}
    for line, record in table.records:
        name = record["Image Index"]
        if not name:
            raise ManifestError(f"'{entries}' line {line}, column 'Image Index': is empty.")
        if name in seen:
            raise ManifestError(
                f"'{entries}' line {line}, column 'Image Index': {name!r} is listed twice (first on line {seen[name]})."
            )
        seen[name] = line
        labels = tuple(part.strip() for part in record["Finding Labels"].split(LABEL_SEPARATOR))
        unknown = [label for label in labels if label not in NIH_LABELS]
        if unknown:
            raise ManifestError(
                f"'{entries}' line {line}, column 'Finding Labels': unknown finding(s) {unknown}; "
                f"allowed are {list(NIH_LABELS)} joined by '|'."
            )
        patient = record["Patient ID"]
        if not patient:
            raise ManifestError(f"'{entries}' line {line}, column 'Patient ID': is empty.")
        records.append((name, labels, patient, _nih_meta(record)))
    return records


def _nih_splits(names: list[str], entries: Path, train_list: Path, test_list: Path) -> dict[str, str]:
    """Image name -> "train" | "test" from the official lists, which must cover exactly the CSV's names."""
    train_names = _read_list(train_list, "train list")
    test_names = _read_list(test_list, "test list")
    both = sorted(set(train_names) & set(test_names))
    if both:
        raise ManifestError(
            f"{len(both)} image(s) are in both '{train_list}' and '{test_list}' ({_first(both)}); "
            "each belongs to one split."
        )
    split_of = {**dict.fromkeys(train_names, "train"), **dict.fromkeys(test_names, "test")}
    unlisted = [name for name in names if name not in split_of]
    if unlisted:
        raise ManifestError(
            f"{len(unlisted)} image(s) of '{entries}' are in neither '{train_list}' nor '{test_list}' "
            f"({_first(unlisted)}); pass the official train_val_list.txt and test_list.txt."
        )
    unknown_listed = sorted(set(split_of) - set(names))
    if unknown_listed:
        raise ManifestError(
            f"{len(unknown_listed)} image(s) in the split lists are not in '{entries}' ({_first(unknown_listed)}); "
            "the lists and the CSV must come from the same release."
        )
    return split_of


def _locate_nih_images(names: list[str], entries: Path, images: Path) -> dict[str, str]:
    """Image name -> its path relative to images (searched recursively); each name found exactly once."""
    wanted = set(names)
    location: dict[str, str] = {}
    duplicates = []
    for file in walk_files(images):
        if file.name in wanted:
            if file.name in location:
                duplicates.append(file.name)
            location.setdefault(file.name, file.relative_to(images).as_posix())
    if duplicates:
        raise ManifestError(
            f"{len(duplicates)} image name(s) occur in more than one folder under '{images}' "
            f"({_first(sorted(duplicates))}); keep one copy of each."
        )
    not_found = [name for name in names if name not in location]
    if not_found:
        raise ManifestError(
            f"{len(not_found):,} of the {len(names):,} images listed in '{entries}' are not under '{images}' "
            f"({_first(not_found)}); unpack every images_0NN archive of the release into it."
        )
    return location


def nih_manifest_rows(entries, train_list, test_list, images) -> list[dict]:
    """Manifest rows for NIH ChestX-ray14: multi-label, official split, patient IDs from the CSV."""
    entries, train_list, test_list, images = Path(entries), Path(train_list), Path(test_list), Path(images)
    if not entries.is_file():
        raise ManifestError(f"The entries file '{entries}' does not exist; pass Data_Entry_2017.csv from the release.")
    if not images.is_dir():
        raise ManifestError(f"The images folder '{images}' is not a folder; pass the folder holding the PNGs.")
    records = _read_nih_entries(entries)
    names = [name for name, _, _, _ in records]
    split_of = _nih_splits(names, entries, train_list, test_list)
    location = _locate_nih_images(names, entries, images)
    present = [column for column in NIH_META if any(meta[column] for _, _, _, meta in records)]
    rows = [
        {"path": location[name], "label": labels, "split": split_of[name], "patient_id": patient}
        | {column: meta[column] for column in present}
        for name, labels, patient, meta in records
    ]
    rows.sort(key=lambda row: (SPLITS.index(row["split"]), row["path"]))
    return rows


def nih_manifest_command(entries, train_list, test_list, images, out, console) -> None:
    """`featx manifest nih`: write the ChestX-ray14 manifest and print label counts per split and leakage."""
    from rich.table import Table

    rows = nih_manifest_rows(entries, train_list, test_list, images)
    written = write_manifest(rows, out)
    present = [split for split in SPLITS if any(row["split"] == split for row in rows)]
    counts = {split: Counter() for split in present}
    patients = {split: set() for split in present}
    for row in rows:
        counts[row["split"]].update(row["label"])
        patients[row["split"]].add(row["patient_id"])
    table = Table(title=f"NIH ChestX-ray14 manifest {written} ({len(rows):,} images, multi-label)")
    table.add_column("label")
    for split in present:
        table.add_column(split, justify="right")
    for label in order_classes(NIH_LABELS):
        table.add_row(label, *(f"{counts[split][label]:,}" for split in present))
    table.add_row("[bold]images[/bold]", *(f"{sum(1 for r in rows if r['split'] == s):,}" for s in present))
    table.add_row("[bold]patients[/bold]", *(f"{len(patients[s]):,}" for s in present))
    console.print(table)
    for note in metadata_notes(rows, [column for column in NIH_META if column in rows[0]]):
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    report = check_manifest(written, images)
    leakage = report.finding("patient_leakage")
    if leakage is not None:
        console.print(f"[red]warning:[/red] {leakage.message}")
    else:
        console.print("No patient appears in both splits.")
    console.print(f"Wrote {len(rows):,} rows to {written}", soft_wrap=True)
    console.print(
        f"Next: featx extract --backbone densenet121 --manifest {written} --data-root {images} --out features",
        soft_wrap=True,
    )
