"""Manifests: read, write, scan and check the CSV that lists every image.

A manifest has one row per image with the columns of DESIGN.md: `path`
(relative to a data root), `label` (several joined by `|` for multi-label),
`split` (train | val | test), `patient_id` and optionally `sha256`. Any other
column is metadata (sex, age, view, site, device, ...): kept as text, "" where a
row has no value, and carried into the embedding cache and the run records.

Patient IDs come from file names through PATIENT_PARSERS, one entry per
dataset. Kermany IDs keep their file-name family verbatim (`person123`,
`IM-0115`, `NORMAL2-IM-0115`): the families are separate numbering schemes,
so keeping the prefix is what stops `person115` and `IM-0115` from merging.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from featx.config import featx_command
from featx.data.dicom import DICOM_SUFFIXES, HEADER_META, DicomReadError, has_preamble, is_dicom_path, read_header
from featx.data.holdout import holdout_patients
from featx.errors import ManifestError, closest, one_of_message
from featx.files import atomic_write_bytes, file_sha256, is_ignored, walk_files
from featx.progress import track

COLUMNS = ("path", "label", "split", "patient_id", "sha256")
REQUIRED_COLUMNS = COLUMNS[:4]
SPLITS = ("train", "val", "test")
SPLIT_POLICIES = ("all-train", "patient-holdout")
RASTER_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff")
IMAGE_SUFFIXES = RASTER_SUFFIXES + DICOM_SUFFIXES  # extension-less files count when they carry the DICM marker
LABEL_SEPARATOR = "|"
NEGATIVE_NAMES = ("normal", "no finding", "negative", "healthy")


# ---------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Manifest:
    path: Path | None
    sha256_hex: str
    paths: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    splits: tuple[str, ...]
    patient_ids: tuple[str, ...]
    file_sha256: tuple[str, ...] | None
    classes: tuple[str, ...]
    multilabel: bool
    meta: dict[str, tuple[str, ...]] = field(default_factory=dict)  # extra column -> one value per row

    def __len__(self) -> int:
        return len(self.paths)

    def label_array(self) -> np.ndarray:
        """(N,) int8 class indices, or (N, K) int8 0/1 indicators when multi-label."""
        index = {name: i for i, name in enumerate(self.classes)}
        if self.multilabel:
            array = np.zeros((len(self.paths), len(self.classes)), dtype=np.int8)
            for row, names in enumerate(self.labels):
                array[row, [index[name] for name in names]] = 1
            return array
        return np.array([index[names[0]] for names in self.labels], dtype=np.int8)


def order_classes(names: Iterable[str]) -> tuple[str, ...]:
    """Sorted class names, negative-like ones (normal, no finding, ...) first.

    For a binary task the positive class is then classes[1]: NORMAL vs
    PNEUMONIA gives positive PNEUMONIA whatever the alphabet says.
    """
    unique = set(names)

    def key(name: str):
        negative = name.strip().lower().replace("_", " ") in NEGATIVE_NAMES
        return (not negative, name)

    return tuple(sorted(unique, key=key))


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    labels: tuple[str, ...]
    split: str
    patient_id: str
    sha256: str
    meta: tuple[str, ...] = ()


@dataclass
class _Parsed:
    rows: list[_Row]
    sha256_hex: str
    has_sha256: bool
    meta_columns: tuple[str, ...] = ()
    problems: list[tuple[str, int, str]] = field(default_factory=list)  # (kind, line, sentence)


@contextmanager
def _csv_errors(path: Path, reader) -> Iterator[None]:
    """csv.Error -> ManifestError naming the line where the bad record starts and what is wrong with its quotes."""
    line = reader.line_num + 1
    try:
        yield
    except csv.Error as error:
        reason = str(error)
        if "unexpected end of data" in reason:
            what = 'opens a quoted field (") that is never closed'
            fix = "close the quote or remove it"
        else:
            what = f"has malformed quoting ({reason})"
            fix = 'a field with a quote must be quoted whole, with inner quotes doubled ("")'
        raise ManifestError(f"Manifest '{path}' line {line} {what}; {fix}.") from None


def _records(path: Path, reader) -> Iterator[dict]:
    """The reader's records, with csv's errors turned into ManifestError."""
    while True:
        with _csv_errors(path, reader):
            record = next(reader, None)
        if record is None:
            return
        yield record


def _parse(path: Path, strict: bool) -> _Parsed:
    """Read the CSV; row problems raise when strict, else they are collected for `check`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"Manifest file '{path}' does not exist; pass the path of a manifest CSV.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(
            f"Manifest '{path}' is not UTF-8 text (byte {error.start}); save it as UTF-8 CSV."
        ) from None
    # strict: a quote that is never closed ends the parse with an error (naming its line) instead of
    # swallowing every following line into one field
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    with _csv_errors(path, reader):
        fieldnames = reader.fieldnames
    header = [name.strip() for name in (fieldnames or [])]
    if not header:
        raise ManifestError(
            f"Manifest '{path}' is empty; it needs a header with the columns {list(REQUIRED_COLUMNS)} "
            "and one row per image."
        )
    reader.fieldnames = header
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise ManifestError(
            f"Manifest '{path}' is missing the column(s) {missing}; the required columns are "
            f"{list(REQUIRED_COLUMNS)} (optional: ['sha256']), found {header}."
        )
    meta_columns = tuple(dict.fromkeys(name for name in header if name and name not in COLUMNS))
    bad = [name for name in meta_columns if "/" in name or name in (".", "..")]
    if bad:
        raise ManifestError(
            f"Manifest '{path}' has the metadata column name(s) {bad}; a column name cannot contain '/' "
            "or be '.' or '..' (rename it, e.g. 'ap_pa')."
        )
    parsed = _Parsed(
        rows=[],
        sha256_hex=hashlib.sha256(data).hexdigest(),
        has_sha256="sha256" in header,
        meta_columns=meta_columns,
    )

    def problem(kind: str, line: int, sentence: str) -> None:
        if strict:
            raise ManifestError(sentence)
        parsed.problems.append((kind, line, sentence))

    for record in _records(path, reader):
        line = reader.line_num
        where = f"Manifest '{path}' line {line}"
        values = {name: (record.get(name) or "").strip() for name in COLUMNS}
        if None in record:  # more fields than the header names
            problem("malformed_row", line, f"{where} has more fields than the header ({len(header)} columns).")
            continue
        if not values["path"]:
            problem("empty_field", line, f"{where}, column 'path': is empty; every row needs an image path.")
            continue
        labels = tuple(part.strip() for part in values["label"].split(LABEL_SEPARATOR))
        if not values["label"] or not all(labels):
            problem(
                "empty_field",
                line,
                f"{where}, column 'label': {values['label']!r} has an empty label; give a class name "
                f"(several joined by '{LABEL_SEPARATOR}').",
            )
            continue
        if not values["patient_id"]:
            problem(
                "empty_field",
                line,
                f"{where}, column 'patient_id': is empty; every image needs a patient ID "
                "(use the file name when images are independent).",
            )
            continue
        split = values["split"]
        if split not in SPLITS:
            hint = closest(split, SPLITS)
            problem(
                "unknown_split",
                line,
                f"{where}, column 'split': must be one of {list(SPLITS)}. Got {split!r} instead"
                + (f"; did you mean {hint!r}?" if hint else "."),
            )
            if strict:
                continue
        meta = tuple((record.get(name) or "").strip() for name in meta_columns)
        parsed.rows.append(
            _Row(line, values["path"], labels, split, values["patient_id"], values["sha256"].lower(), meta)
        )
    if not parsed.rows and not parsed.problems:
        raise ManifestError(f"Manifest '{path}' has a header but no rows; it needs one row per image.")
    return parsed


def _manifest_from_rows(
    rows: list[_Row], path: Path | None, sha256_hex: str, has_sha256: bool, meta_columns: tuple[str, ...] = ()
) -> Manifest:
    classes = order_classes(name for row in rows for name in row.labels)
    return Manifest(
        path=path,
        sha256_hex=sha256_hex,
        paths=tuple(row.path for row in rows),
        labels=tuple(row.labels for row in rows),
        splits=tuple(row.split for row in rows),
        patient_ids=tuple(row.patient_id for row in rows),
        file_sha256=tuple(row.sha256 for row in rows) if has_sha256 else None,
        classes=classes,
        multilabel=any(len(row.labels) > 1 for row in rows),
        meta={name: tuple(row.meta[k] for row in rows) for k, name in enumerate(meta_columns)},
    )


def read_manifest(path) -> Manifest:
    """Read and validate a manifest CSV; ManifestError names the file, line and column of a mistake."""
    path = Path(path)
    parsed = _parse(path, strict=True)
    return _manifest_from_rows(parsed.rows, path, parsed.sha256_hex, parsed.has_sha256, parsed.meta_columns)


def write_manifest(rows: Iterable[Mapping], path) -> Path:
    """Write rows (dicts with path, label, split, patient_id[, sha256][, metadata...]) as a manifest CSV.

    A label may be a string or a sequence of names (joined by '|'). The sha256
    column is written only when some row has one; every other key is a metadata column (first-seen order,
    None or a missing key written as ""). Lines end in '\\n' so the
    bytes are the same on every platform. The file appears atomically.
    """
    path = Path(path)
    rows = list(rows)
    with_sha = any(row.get("sha256") for row in rows)
    meta_columns = list(dict.fromkeys(key for row in rows for key in row if key not in COLUMNS))
    columns = [*(COLUMNS if with_sha else REQUIRED_COLUMNS), *meta_columns]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for number, row in enumerate(rows, start=1):
        missing = [name for name in REQUIRED_COLUMNS if name not in row]
        if missing:
            raise ManifestError(
                f"Manifest row {number} to write to '{path}' lacks {missing}; rows need {list(REQUIRED_COLUMNS)}."
            )
        label = row["label"]
        if not isinstance(label, str):
            label = LABEL_SEPARATOR.join(label)
        fields = [str(row["path"]), label, row["split"], str(row["patient_id"])]
        if with_sha:
            fields.append(row.get("sha256") or "")
        fields += ["" if row.get(name) is None else str(row[name]) for name in meta_columns]
        writer.writerow(fields)
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))
    return path


def read_path_column(path) -> list[str]:
    """The non-empty `path` values of a CSV whose other columns may be anything (predict's input lists)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ManifestError(f"Manifest '{path}' has no 'path' column; its columns are {reader.fieldnames}.")
        return [row["path"] for row in reader if row.get("path")]


def _normalised_relative(rel_path: str) -> str | None:
    """The path with '.' and '..' folded lexically, or None when it is absolute or climbs out."""
    text = str(rel_path).replace("\\", "/")
    if not text or text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return None
    normal = os.path.normpath(text).replace("\\", "/")
    if normal == ".." or normal.startswith("../") or normal == ".":
        return None
    return normal


def resolve_path(data_root, rel_path) -> Path:
    """data_root / rel_path; ManifestError when rel_path is absolute or climbs out of data_root.

    The test is lexical (symlinks inside the data root are allowed to point anywhere,
    as they do for datasets kept on another disk).
    """
    normal = _normalised_relative(rel_path)
    if normal is None:
        raise ManifestError(
            f"Manifest path {str(rel_path)!r} escapes the data root '{data_root}'; "
            "paths must be relative and stay inside it."
        )
    return Path(data_root) / PurePosixPath(normal)


# ---------------------------------------------------------------- patient IDs


_KERMANY_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # pneumonia: person<ID>_<bacteria|virus>_<n>
    re.compile(r"^(NORMAL2-IM-\d+)-"),  # normal, second batch: NORMAL2-IM-<ID>-<n>
    re.compile(r"^(IM-\d+)-"),  # normal: IM-<ID>-<n>
)


def kermany_patient(path: str) -> str | None:
    """`person123`, `IM-0115` or `NORMAL2-IM-0115` from a Kermany file name; None when it does not match."""
    name = PurePosixPath(str(path).replace("\\", "/")).name
    for pattern in _KERMANY_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return None


def generic_patient(path: str) -> str:
    """The file stem: one patient per image name (the fallback when no dataset parser fits)."""
    return PurePosixPath(str(path).replace("\\", "/")).stem


PATIENT_PARSERS: dict[str, Callable[[str], str | None]] = {
    "kermany": kermany_patient,
    "generic": generic_patient,
}
FALLBACK_PARSER = "generic"


def _choose_parser(dataset: str, paths: list[str]) -> tuple[str, str | None]:
    """(parser name, note) for these paths; 'auto' picks the first parser that reads every name."""
    if dataset != "auto" and dataset not in PATIENT_PARSERS:
        raise ManifestError(one_of_message("dataset", dataset, ["auto", *PATIENT_PARSERS]))
    if dataset == "auto":
        best = None
        for name, parser in PATIENT_PARSERS.items():
            if name == FALLBACK_PARSER:
                continue
            matched = sum(parser(path) is not None for path in paths)
            if matched == len(paths):
                return name, None
            if best is None or matched > best[1]:
                best = (name, matched)
        detail = f" (best: {best[0]!r} read {best[1]} of {len(paths)} names)" if best else ""
        return FALLBACK_PARSER, (
            f"No dataset parser recognised every file name{detail}; used the generic fallback: "
            "patient_id = file stem, i.e. one patient per image name. Pass --dataset NAME if a parser fits."
        )
    parser = PATIENT_PARSERS[dataset]
    unread = [path for path in paths if parser(path) is None]
    if unread:
        raise ManifestError(
            f"The {dataset!r} patient-ID parser cannot read {len(unread)} of {len(paths)} file names "
            f"(first: {unread[0]!r}); use --dataset generic or auto, or rename the files."
        )
    note = None
    if dataset == FALLBACK_PARSER:
        note = "Used the generic parser: patient_id = file stem, i.e. one patient per image name."
    return dataset, note


def manifest_from_file_list(file_list, dataset: str = "kermany") -> list[dict]:
    """Manifest rows from a CSV of path,label,split (e.g. ../shared/data/kermany2018_files.csv).

    Patient IDs come from PATIENT_PARSERS[dataset]; rows are ordered by split
    (train, val, test) then path, so the output does not depend on the list's order.
    """
    file_list = Path(file_list)
    if not file_list.is_file():
        raise ManifestError(f"File list '{file_list}' does not exist; pass a CSV with the columns path, label, split.")
    with file_list.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in ("path", "label", "split") if name not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(
                f"File list '{file_list}' is missing the column(s) {missing}; it needs path, label, split."
            )
        records = list(reader)
    if not records:
        raise ManifestError(f"File list '{file_list}' has no rows.")
    parser_name, _ = _choose_parser(dataset, [record["path"] for record in records])
    parser = PATIENT_PARSERS[parser_name]
    rows = []
    for line, record in enumerate(records, start=2):
        split = record["split"].strip()
        if split not in SPLITS:
            raise ManifestError(
                f"File list '{file_list}' line {line}, column 'split': must be one of {list(SPLITS)}. "
                f"Got {split!r} instead."
            )
        path = record["path"].strip()
        rows.append({"path": path, "label": record["label"].strip(), "split": split, "patient_id": parser(path)})
    rows.sort(key=lambda row: (SPLITS.index(row["split"]), row["path"]))
    return rows


# ---------------------------------------------------------------- scan


@dataclass(frozen=True)
class ScanResult:
    rows: list[dict]
    layout: str  # "split/label/file" | "label/file"
    parser: str
    notes: tuple[str, ...]


def is_image_file(path) -> bool:
    """An image featx reads: a raster or DICOM suffix, or any other name whose file carries the DICM marker."""
    suffix = Path(path).suffix.lower()
    return suffix in IMAGE_SUFFIXES or (suffix not in RASTER_SUFFIXES and has_preamble(path))


def _image_files(folder: Path) -> tuple[list[Path], int]:
    """Image files anywhere under folder (sorted), and how many other visible files were skipped."""
    images, skipped = [], 0
    for file in walk_files(folder):
        if is_image_file(file):
            images.append(file)
        else:
            skipped += 1
    return images, skipped


def _dicom_headers(root: Path, paths: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """relative path -> featx.data.dicom.read_header for the DICOM files among paths; 'path: reason' per failure."""
    headers, failures = {}, []
    for rel in paths:
        file = root / rel
        if not is_dicom_path(file, RASTER_SUFFIXES):
            continue
        try:
            headers[rel] = read_header(file)
        except DicomReadError as error:
            failures.append(f"{rel}: {error}")
    return headers, failures


def scan(
    root, dataset: str = "auto", split_policy: str | None = None, test_fraction: float = 0.2, seed: int = 0
) -> ScanResult:
    """Build manifest rows from a folder laid out split/label/file or label/file."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"Data root '{root}' is not a folder; pass the folder that holds the images.")
    if dataset != "auto" and dataset not in PATIENT_PARSERS:
        raise ManifestError(one_of_message("dataset", dataset, ["auto", *PATIENT_PARSERS]))
    if split_policy is not None and split_policy not in SPLIT_POLICIES:
        raise ManifestError(one_of_message("split_policy", split_policy, SPLIT_POLICIES))
    top = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not is_ignored(entry.name))
    if not top:
        raise ManifestError(f"Data root '{root}' has no sub-folders; lay it out as split/label/file or label/file.")
    split_dirs = [name for name in top if name in SPLITS]
    notes: list[str] = []
    entries: list[tuple[str, str, str]] = []  # (relative path, label, split or "")
    skipped = 0
    if split_dirs:
        others = [name for name in top if name not in SPLITS]
        if others:
            raise ManifestError(
                f"Data root '{root}' mixes split folders {split_dirs} with other folders {others}; "
                f"a split/label/file tree has only {list(SPLITS)} at the top."
            )
        layout = "split/label/file"
        if split_policy is not None:
            notes.append(
                f"The tree already has split folders {split_dirs}; --split-policy {split_policy} was not used."
            )
        for split in split_dirs:
            for label_dir in sorted(p for p in (root / split).iterdir() if p.is_dir() and not is_ignored(p.name)):
                files, n_skipped = _image_files(label_dir)
                skipped += n_skipped
                entries += [(f.relative_to(root).as_posix(), label_dir.name, split) for f in files]
    else:
        layout = "label/file"
        if split_policy is None:
            raise ManifestError(
                f"Data root '{root}' is laid out label/file (top folders {top[:5]}); pass --split-policy "
                f"{SPLIT_POLICIES[0]} or {SPLIT_POLICIES[1]} to say how to split it."
            )
        if split_policy == "patient-holdout" and not 0 < test_fraction < 1:
            raise ManifestError(
                f"The 'test_fraction' parameter must be between 0 and 1 (exclusive). Got {test_fraction!r} instead."
            )
        for label in top:
            files, n_skipped = _image_files(root / label)
            skipped += n_skipped
            entries += [(f.relative_to(root).as_posix(), label, "") for f in files]
    if not entries:
        raise ManifestError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found under '{root}' in a {layout} layout.")
    if skipped:
        notes.append(f"Skipped {skipped} non-image file(s).")
    parser_name, note = _choose_parser(dataset, [path for path, _, _ in entries])
    parser = PATIENT_PARSERS[parser_name]
    headers, unreadable = _dicom_headers(root, [path for path, _, _ in entries])
    from_header = 0
    rows = []
    for path, label, split in entries:
        row = {"path": path, "label": label, "split": split, "patient_id": parser(path)}
        header = headers.get(path)
        # the file names carry no patient (generic fallback): a DICOM file's PatientID does
        if header and header["patient_id"] and dataset == "auto" and parser_name == FALLBACK_PARSER:
            row["patient_id"] = header["patient_id"]
            from_header += 1
        rows.append(row)
    if from_header:
        parser_name = "dicom-header"
        note = f"patient_id from the DICOM PatientID of {from_header} of {len(rows)} file(s)" + (
            ", the file stem for the rest." if from_header < len(rows) else "."
        )
    if note:
        notes.append(note)
    present = [column for column in HEADER_META if any(header[column] for header in headers.values())]
    for row in rows:  # metadata columns from the DICOM headers, "" for other files
        header = headers.get(row["path"], {})
        row.update({column: header.get(column, "") for column in present})
    if present:
        notes.append(f"Metadata columns {present} from the DICOM headers of {len(headers)} file(s).")
    if unreadable:
        notes.append(f"{len(unreadable)} DICOM header(s) could not be read (first: {unreadable[0]}).")

    if layout == "label/file":
        if split_policy == "all-train":
            for row in rows:
                row["split"] = "train"
        else:
            patient_classes: dict[str, set[str]] = defaultdict(set)
            for row in rows:
                patient_classes[row["patient_id"]].add(row["label"])
            strata = {patient: LABEL_SEPARATOR.join(sorted(names)) for patient, names in patient_classes.items()}
            test = holdout_patients(strata, test_fraction, seed)
            for row in rows:
                row["split"] = "test" if row["patient_id"] in test else "train"
            notes.append(
                f"patient-holdout: {len(test)} of {len(strata)} patients to test "
                f"(each by a seeded hash of its id, so adding patients moves none; fraction {test_fraction}, "
                f"seed {seed})."
            )
    rows.sort(key=lambda row: (SPLITS.index(row["split"]), row["path"]))
    return ScanResult(rows=rows, layout=layout, parser=parser_name, notes=tuple(notes))


# ---------------------------------------------------------------- check


@dataclass(frozen=True)
class Finding:
    kind: str  # missing_file | duplicate_path | escapes_root | unknown_split | empty_field | malformed_row
    #            | missing_class | patient_leakage | sha256_mismatch
    message: str  # one sentence
    count: int
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    manifest: Path
    data_root: Path
    n_rows: int
    classes: tuple[str, ...]
    counts: dict[str, dict[str, int]]  # split -> class -> images (a multi-label image counts once per label)
    images_per_split: dict[str, int]
    patients_per_split: dict[str, int]
    findings: tuple[Finding, ...]
    sha256_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was flagged."""
        return not self.findings

    def finding(self, kind: str) -> Finding | None:
        """The finding of this kind, or None when there is none."""
        return next((f for f in self.findings if f.kind == kind), None)


EXAMPLES = 5


def _examples(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(list(items)[:EXAMPLES])


# Each finder below looks for one kind of problem and returns its Finding, or None when there is none.

_ROW_PROBLEM_WHAT = {
    "malformed_row": "malformed",
    "empty_field": "with an empty field",
    "unknown_split": "with an unknown split",
}


def _row_problem(kind: str, problems: list[tuple[str, int, str]]) -> Finding | None:
    """The rows `_parse` set aside as `kind`, quoting the first one's sentence."""
    sentences = [(line, sentence) for k, line, sentence in problems if k == kind]
    if not sentences:
        return None
    return Finding(
        kind,
        f"{len(sentences)} row(s) {_ROW_PROBLEM_WHAT[kind]}; first: {sentences[0][1]}",
        len(sentences),
        _examples(f"line {line}" for line, _ in sentences),
    )


def _malformed_row(problems: list[tuple[str, int, str]]) -> Finding | None:
    return _row_problem("malformed_row", problems)


def _empty_field(problems: list[tuple[str, int, str]]) -> Finding | None:
    return _row_problem("empty_field", problems)


def _unknown_split(problems: list[tuple[str, int, str]]) -> Finding | None:
    return _row_problem("unknown_split", problems)


def _duplicate_path(rows: list[_Row]) -> Finding | None:
    path_counts = Counter(row.path for row in rows)
    duplicates = sorted(path for path, n in path_counts.items() if n > 1)
    if not duplicates:
        return None
    return Finding(
        "duplicate_path",
        f"{len(duplicates)} path(s) are listed more than once (e.g. {duplicates[0]!r}); "
        "each image needs exactly one row.",
        len(duplicates),
        _examples(duplicates),
    )


def _escapes_root(rows: list[_Row], data_root: Path) -> Finding | None:
    escaping = [row.path for row in rows if _normalised_relative(row.path) is None]
    if not escaping:
        return None
    return Finding(
        "escapes_root",
        f"{len(escaping)} path(s) escape the data root '{data_root}' (e.g. {escaping[0]!r}); "
        "paths must be relative and stay inside it.",
        len(escaping),
        _examples(escaping),
    )


def _locate(rows: list[_Row], data_root: Path) -> tuple[list[tuple[_Row, Path]], list[str]]:
    """(row, file) where the file exists, and the paths whose file does not; escaping paths are in neither."""
    present, missing = [], []
    for row in rows:
        if _normalised_relative(row.path) is None:
            continue
        file = resolve_path(data_root, row.path)
        if file.is_file():
            present.append((row, file))
        else:
            missing.append(row.path)
    return present, missing


def _missing_file(missing: list[str], rows: list[_Row], data_root: Path) -> Finding | None:
    if not missing:
        return None
    missing_set = set(missing)
    by_split = Counter(row.split for row in rows if row.path in missing_set)
    detail = ", ".join(f"{split} {n}" for split, n in sorted(by_split.items()))
    return Finding(
        "missing_file",
        f"{len(missing)} file(s) listed in the manifest are not under '{data_root}' ({detail}; e.g. {missing[0]!r}).",
        len(missing),
        _examples(missing),
    )


def _missing_class(split: str, classes: tuple[str, ...], per_class: dict[str, int]) -> Finding | None:
    absent = [name for name in classes if per_class[name] == 0]
    if not absent:
        return None
    return Finding(
        "missing_class",
        f"Split {split!r} has no images of class(es) {absent}; each split should hold every class "
        f"{list(classes)} for its metrics to be defined.",
        len(absent),
        tuple(f"{split}:{name}" for name in absent),
    )


def _patient_leakage(valid_rows: list[_Row], present: list[str]) -> Finding | None:
    split_of_patient: dict[str, Counter] = defaultdict(Counter)
    for row in valid_rows:
        split_of_patient[row.patient_id][row.split] += 1
    leaking = sorted(p for p, splits in split_of_patient.items() if len(splits) > 1)
    if not leaking:
        return None
    pairs = Counter("+".join(s for s in SPLITS if s in split_of_patient[p]) for p in leaking)
    pair_text = ", ".join(f"{pair} {n}" for pair, n in sorted(pairs.items()))
    leaked_images = {s: sum(split_of_patient[p][s] for p in leaking) for s in present}
    image_text = ", ".join(f"{n} {s}" for s, n in leaked_images.items() if n)
    first = leaking[0]
    first_text = ", ".join(f"{s} {n}" for s, n in split_of_patient[first].items())
    return Finding(
        "patient_leakage",
        f"{len(leaking)} patient(s) appear in more than one split ({pair_text}; images involved: {image_text}; "
        f"e.g. {first!r}: {first_text}); a patient must sit in exactly one split.",
        len(leaking),
        _examples(leaking),
    )


def _sha256_mismatch(to_hash: list[tuple[_Row, Path]], progress=None) -> Finding | None:
    """Hash every (row, file) pair, through `progress` when given, against the row's sha256."""
    mismatched = []
    for row, file in to_hash if progress is None or not to_hash else progress(to_hash):
        if file_sha256(file) != row.sha256:
            mismatched.append(row.path)
    if not mismatched:
        return None
    return Finding(
        "sha256_mismatch",
        f"{len(mismatched)} file(s) do not match their manifest sha256 (e.g. {mismatched[0]!r}); the files changed "
        "since the manifest was written.",
        len(mismatched),
        _examples(mismatched),
    )


def _split_counts(valid_rows: list[_Row]):
    """(classes, split -> class -> images, images per split, patients per split) over the splits present."""
    classes = order_classes(name for row in valid_rows for name in row.labels)
    counts = {split: dict.fromkeys(classes, 0) for split in SPLITS}
    images_per_split: Counter = Counter()
    patients: dict[str, set[str]] = defaultdict(set)
    for row in valid_rows:
        images_per_split[row.split] += 1
        patients[row.split].add(row.patient_id)
        for name in row.labels:
            counts[row.split][name] += 1
    present = [split for split in SPLITS if images_per_split[split]]
    return (
        classes,
        {split: counts[split] for split in present},
        {split: images_per_split[split] for split in present},
        {split: len(patients[split]) for split in present},
    )


def check_manifest(manifest, data_root, verify_sha256: bool = False, progress=None) -> CheckReport:
    """Counts and problems of a manifest against its data root (nothing raised for problems it can list).

    `manifest` is a path or a Manifest; a path is read leniently so that unknown
    splits and empty fields become findings. Only an unreadable manifest (missing,
    no required columns, empty) or a missing data root raises ManifestError.
    """
    data_root = Path(data_root)
    if isinstance(manifest, Manifest):
        shas = manifest.file_sha256 or ("",) * len(manifest)
        columns = zip(manifest.paths, manifest.labels, manifest.splits, manifest.patient_ids, shas)
        rows = [_Row(i + 2, *values) for i, values in enumerate(columns)]
        source, problems = manifest.path, []
    else:
        parsed = _parse(Path(manifest), strict=False)
        rows, source, problems = parsed.rows, Path(manifest), parsed.problems
    if not data_root.is_dir():
        raise ManifestError(
            f"Data root '{data_root}' is not a folder; pass the folder the manifest paths are relative to."
        )

    valid_rows = [row for row in rows if row.split in SPLITS]
    classes, counts, images_per_split, patients_per_split = _split_counts(valid_rows)
    found, missing = _locate(rows, data_root)
    to_hash = [(row, file) for row, file in found if row.sha256] if verify_sha256 else []
    candidates = [
        _malformed_row(problems),
        _empty_field(problems),
        _unknown_split(problems),
        _duplicate_path(rows),
        _escapes_root(rows, data_root),
        _missing_file(missing, rows, data_root),
        *(_missing_class(split, classes, per_class) for split, per_class in counts.items()),
        _patient_leakage(valid_rows, list(counts)),
        _sha256_mismatch(to_hash, progress),
    ]
    return CheckReport(
        manifest=source if source is not None else Path("<memory>"),
        data_root=data_root,
        n_rows=len(rows),
        classes=classes,
        counts=counts,
        images_per_split=images_per_split,
        patients_per_split=patients_per_split,
        findings=tuple(finding for finding in candidates if finding is not None),
        sha256_checked=len(to_hash),
    )


# ---------------------------------------------------------------- commands


def _counts_table(title: str, counts, images_per_split, patients_per_split, classes):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("split")
    for name in classes:
        table.add_column(name, justify="right")
    table.add_column("images", justify="right")
    table.add_column("patients", justify="right")
    table.add_column("balance", justify="left")
    for split, per_class in counts.items():
        total = sum(per_class.values()) or 1
        balance = " / ".join(f"{100 * per_class[name] / total:.1f}%" for name in classes)
        table.add_row(
            split,
            *(f"{per_class[name]:,}" for name in classes),
            f"{images_per_split[split]:,}",
            f"{patients_per_split[split]:,}",
            balance,
        )
    return table


def _summarise_rows(rows: list[dict]):
    classes = order_classes(name for row in rows for name in str(row["label"]).split(LABEL_SEPARATOR))
    counts: dict[str, dict[str, int]] = {}
    images: Counter = Counter()
    patients: dict[str, set] = defaultdict(set)
    for row in rows:
        per_class = counts.setdefault(row["split"], dict.fromkeys(classes, 0))
        for name in str(row["label"]).split(LABEL_SEPARATOR):
            per_class[name] += 1
        images[row["split"]] += 1
        patients[row["split"]].add(row["patient_id"])
    ordered = [s for s in SPLITS if s in counts]
    return (
        {s: counts[s] for s in ordered},
        {s: images[s] for s in ordered},
        {s: len(patients[s]) for s in ordered},
        classes,
    )


def scan_command(root, out, dataset, split_policy, test_fraction, seed, console) -> None:
    """`featx manifest scan`: scan a tree, write the manifest, print what it holds."""
    result = scan(root, dataset=dataset, split_policy=split_policy, test_fraction=test_fraction, seed=seed)
    written = write_manifest(result.rows, out)
    counts, images, patients, classes = _summarise_rows(result.rows)
    title = f"{root} ({result.layout}, patient IDs: {result.parser})"
    console.print(_counts_table(title, counts, images, patients, classes))
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"Wrote {len(result.rows):,} rows to {written}", soft_wrap=True)
    console.print(f"Next: {featx_command()} manifest check {written} --data-root {root}", soft_wrap=True)


def check_command(manifest, data_root, verify_sha256, console) -> bool:
    """`featx manifest check`: print counts and findings; True when nothing is flagged."""
    from rich.table import Table

    def progress(items):
        return track(items, total=len(items), description="sha256", console=console, unit="files")

    report = check_manifest(manifest, data_root, verify_sha256=verify_sha256, progress=progress)
    console.print(
        _counts_table(
            f"{report.manifest} ({report.n_rows:,} rows, data root {report.data_root})",
            report.counts,
            report.images_per_split,
            report.patients_per_split,
            report.classes,
        )
    )
    if verify_sha256:
        console.print(
            f"sha256 verified for {report.sha256_checked:,} file(s)"
            + ("" if report.sha256_checked else " (the manifest has no sha256 values for present files)")
        )
    if report.ok:
        console.print("[green]No problems found.[/green]")
        console.print(
            f"Next: {featx_command()} extract --backbone resnet50 --manifest {manifest} --data-root {data_root} "
            "--out features",
            soft_wrap=True,
            highlight=False,
        )
        return True
    table = Table(title="Problems")
    table.add_column("problem", style="red")
    table.add_column("count", justify="right")
    table.add_column("details")
    for finding in report.findings:
        table.add_row(finding.kind, f"{finding.count:,}", finding.message)
    console.print(table)
    return False
