"""Dataset adapters: one module per public chest X-ray release, each writing a standard featx manifest.

Every adapter reads the release's own files as they are distributed, keeps its
real patient ids and its official split where it has one (else a patient-grouped
hold-out through featx.data.holdout), fills the metadata columns the release
carries (sex, age, view, ...), and checks its output with `featx manifest check`.
Adding a dataset = one module here (`<name>_manifest_rows`, `<name>_manifest_command`), one entry in
ADAPTERS (the `featx manifest <name>` help and the tests walk it) and its parser in cli.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Adapter:
    name: str  # the `featx manifest <name>` action
    title: str
    release: str  # what the user points it at
    metadata: tuple[str, ...]  # the metadata columns it fills


ADAPTERS: dict[str, Adapter] = {
    "nih": Adapter(
        "nih",
        "NIH ChestX-ray14 (multi-label, official split)",
        "Data_Entry_2017.csv, train_val_list.txt, test_list.txt and the images_0NN folders",
        ("sex", "age", "view"),
    ),
    "rsna": Adapter(
        "rsna",
        "RSNA Pneumonia Detection Challenge (DICOM; any box or the three-way class; patient hold-out)",
        "the unpacked Kaggle folder: stage_2_train_labels.csv, stage_2_detailed_class_info.csv, stage_2_train_images/",
        ("sex", "age", "view"),
    ),
    "chexpert": Adapter(
        "chexpert",
        "CheXpert (14 observations, uncertain-label policies, official train/valid split)",
        "the CheXpert-v1.0(-small) folder: train.csv, valid.csv, train/, valid/",
        ("sex", "age", "frontal_lateral", "view"),
    ),
    "mimic": Adapter(
        "mimic",
        "MIMIC-CXR-JPG (CheXpert-labeller labels, official split, subject_id as patient)",
        "the mimic-cxr-jpg/2.0.0 folder: mimic-cxr-2.0.0-{metadata,chexpert,split}.csv(.gz) and files/",
        ("view",),
    ),
}
