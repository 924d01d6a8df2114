"""CheXpert (Irvin et al. 2019): train.csv / valid.csv, 14 observations with uncertain labels, patient from the path.

The CSV paths start with the release folder (`CheXpert-v1.0-small/train/patient00001/
study1/view1_frontal.jpg`); the manifest keeps them relative to that folder, so
`--root` is also the data root. valid.csv (234 radiologist-labelled images) is the
test split by default. A label value is 1 (positive), 0 or blank (negative: blank
means "not mentioned"), or -1 (uncertain), resolved per label by --uncertain:
zeros (U-Zeros), ones (U-Ones) or ignore (U-Ignore; a multi-label manifest has no
per-label mask, so the image is left out). The CheXpert labeller's 14 observations
are shared with MIMIC-CXR-JPG (featx.data.adapters.mimic).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path, PurePosixPath

from featx.data.adapters.common import (
    NEGATIVE,
    check_present,
    metadata_notes,
    read_table,
    release_folder,
    sort_rows,
    write_and_check,
)
from featx.errors import ManifestError, one_of_message

CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
COMPETITION_LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
LABEL_SETS = {"all": CHEXPERT_LABELS, "competition": COMPETITION_LABELS}
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
# U-Ones for Atelectasis and Edema, U-Zeros for the others: the per-label choice of Pham et al. 2021
# (arXiv:1911.06475), following the CheXpert paper's finding that U-Ones suits these two.
PUBLISHED_UNCERTAIN = {"Atelectasis": "ones", "Edema": "ones"}
VIEWS = ("all", "frontal", "lateral")
VALID_SPLITS = ("test", "val")
SEXES = {"male": "M", "female": "F"}
_PATIENT = re.compile(r"(?:^|/)(patient\d+)(?:/|$)")
_VALUES = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": 0, "-1": -1, "-1.0": -1}
RELEASE = "CheXpert-v1.0 (or -small)"


def parse_labels(text: str) -> tuple[str, ...]:
    """'all', 'competition' (the 5 competition tasks) or a comma list of observation names."""
    text = (text or "").strip()
    if text in LABEL_SETS:
        return LABEL_SETS[text]
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise ManifestError(one_of_message("labels", text, [*LABEL_SETS, *CHEXPERT_LABELS]))
    for name in names:
        if name not in CHEXPERT_LABELS:
            raise ManifestError(one_of_message("labels", name, [*LABEL_SETS, *CHEXPERT_LABELS]))
    return names


def parse_uncertain(text: str, labels: tuple[str, ...]) -> dict[str, str]:
    """Label -> zeros | ones | ignore from 'zeros', 'ones', 'ignore', 'published' or 'Edema=ones,zeros'.

    A bare policy applies to every label not named; 'published' is PUBLISHED_UNCERTAIN (U-Zeros elsewhere).
    """
    text = (text or "").strip()
    if text == "published":
        return {label: PUBLISHED_UNCERTAIN.get(label, "zeros") for label in labels}
    default, named = "zeros", {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        label, _, policy = part.rpartition("=")
        label, policy = label.strip(), policy.strip()
        if policy not in UNCERTAIN_POLICIES:
            raise ManifestError(one_of_message("uncertain", policy, [*UNCERTAIN_POLICIES, "published"]))
        if not label:
            default = policy
        elif label not in labels:
            raise ManifestError(one_of_message("uncertain label", label, labels))
        else:
            named[label] = policy
    return {label: named.get(label, default) for label in labels}


def label_value(text: str, where: str) -> int:
    """1, 0 or -1 from a CheXpert-labeller cell (blank = not mentioned = 0); ManifestError naming the cell."""
    value = _VALUES.get(text.strip())
    if value is None:
        raise ManifestError(f"{where}: {text!r} is not a CheXpert label value (1, 0, -1 or blank).")
    return value


def resolve_labels(record: dict[str, str], labels, policies, where: str) -> tuple[tuple[str, ...] | None, list[str]]:
    """(the row's manifest labels, or None when an uncertain label is to be ignored) and the labels that were ignored.

    One chosen label gives a binary row (that label or 'negative'); several give a multi-label row whose
    positives are joined, 'negative' when none is.
    """
    positives, ignored = [], []
    for label in labels:
        value = label_value(record.get(label, ""), f"{where}, column {label!r}")
        if value == -1:
            policy = policies[label]
            if policy == "ignore":
                ignored.append(label)
                continue
            value = 1 if policy == "ones" else 0
        if value == 1:
            positives.append(label)
    if ignored:
        return None, ignored
    return (tuple(positives) or (NEGATIVE,)), []


def labelling_notes(chosen: tuple[str, ...], policies: dict[str, str], labeller: str = "") -> list[str]:
    """The notes naming the chosen labels and their uncertain-label policies (`labeller`: which label file)."""
    kind = " (binary: the label vs 'negative')" if len(chosen) == 1 else " (multi-label; 'negative' = none of them)"
    return [
        f"labels{f' ({labeller} labeller)' if labeller else ''}: {', '.join(chosen)}{kind}",
        "uncertain (-1): " + ", ".join(f"{label}={policy}" for label, policy in policies.items()),
    ]


def ignored_note(n_images: int, ignored: Counter, per_study: bool = False) -> str:
    """The note on the images --uncertain ignore left out; `ignored` counts images (or studies) per label."""
    of, unit = (" of studies", " studies") if per_study else ("", "")
    return (
        f"--uncertain ignore: left out {n_images:,} image(s){of} with an uncertain ignored label ("
        + ", ".join(f"{label} {n:,}{unit}" for label, n in ignored.most_common())
        + ")."
    )


def view_group(frontal_lateral: str) -> str:
    return (frontal_lateral or "").strip().lower()


def _relative(csv_path: str) -> str:
    """The CSV path without its first component (the release folder name)."""
    parts = PurePosixPath(csv_path.replace("\\", "/")).parts
    return PurePosixPath(*parts[1:]).as_posix() if len(parts) > 1 else csv_path


def chexpert_manifest_rows(
    root, labels: str = "all", uncertain: str = "zeros", view: str = "all", valid_split: str = "test"
) -> tuple[list[dict], list[str]]:
    """(manifest rows, notes) for a CheXpert release folder; ManifestError for anything that does not fit."""
    root = release_folder(root, "CheXpert", RELEASE)
    chosen = parse_labels(labels)
    policies = parse_uncertain(uncertain, chosen)
    if view not in VIEWS:
        raise ManifestError(one_of_message("view", view, VIEWS))
    if valid_split not in VALID_SPLITS:
        raise ManifestError(one_of_message("valid_split", valid_split, VALID_SPLITS))
    required = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *chosen)
    rows, ignored, n_ignored, other_view = [], Counter(), 0, 0
    for name, split in (("train.csv", "train"), ("valid.csv", valid_split)):
        if not (root / name).is_file():
            raise ManifestError(f"The CheXpert {name} is not in '{root}'; pass --root the {RELEASE} folder.")
        table = read_table(root / name, required, f"CheXpert {name}")
        for line, record in table.records:
            where = f"'{table.path}' line {line}"
            match = _PATIENT.search(record["Path"])
            if not match:
                raise ManifestError(f"{where}, column 'Path': {record['Path']!r} names no patientNNNNN folder.")
            group = view_group(record["Frontal/Lateral"])
            if view != "all" and group != view:
                other_view += 1
                continue
            row_labels, row_ignored = resolve_labels(record, chosen, policies, where)
            if row_labels is None:
                ignored.update(row_ignored)
                n_ignored += 1
                continue
            ap_pa = record["AP/PA"].upper()
            rows.append(
                {
                    "path": _relative(record["Path"]),
                    "label": row_labels,
                    "split": split,
                    "patient_id": match.group(1),
                    "sex": SEXES.get(record["Sex"].lower(), ""),
                    "age": record["Age"] if record["Age"].isdigit() else "",
                    "frontal_lateral": group,
                    "view": ap_pa or ("LATERAL" if group == "lateral" else ""),
                }
            )
    if not rows:
        raise ManifestError(f"No CheXpert image under '{root}' is left after --view {view} and --uncertain.")
    check_present(root, [row["path"] for row in rows], "images listed in train.csv/valid.csv")
    notes = [*labelling_notes(chosen, policies), f"valid.csv is the {valid_split} split; train.csv is train."]
    if other_view:
        notes.append(f"--view {view}: left out {other_view:,} image(s) of the other view.")
    if n_ignored:
        notes.append(ignored_note(n_ignored, ignored))
    notes += metadata_notes(rows, ("sex", "age", "frontal_lateral", "view"))
    return sort_rows(rows), notes


def chexpert_manifest_command(root, out, labels, uncertain, view, valid_split, console) -> bool:
    """`featx manifest chexpert`: write the manifest, print its counts, notes and `featx manifest check`."""
    rows, notes = chexpert_manifest_rows(root, labels, uncertain, view, valid_split)
    return write_and_check(rows, out, Path(root), "CheXpert manifest", notes, console)
