"""`featx fetch`: download or unpack a public dataset and check it against its manifest.

`featx fetch kermany` unpacks the Kermany 2018 chest X-ray release (through
kagglehub, or from an archive downloaded by hand) into DEST/{train,test}/<class>/
and checks it against data_manifests/kermany2018.csv. The manifests of releases
that are not fetched (NIH ChestX-ray14, RSNA Pneumonia, CheXpert, MIMIC-CXR-JPG)
are written by featx/data/adapters/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from featx.data.manifest import (
    IMAGE_SUFFIXES,
    SPLITS,
    read_manifest,
)
from featx.errors import FetchError, one_of_message
from featx.files import is_ignored, walk_files
from featx.progress import progress_bar

DATASETS = ("kermany",)
KERMANY_KAGGLE_HANDLE = "paultimothymooney/chest-xray-pneumonia"
KERMANY_DOI = "10.17632/rscbjbr9sj.2"
KERMANY_MANIFEST_NAME = "kermany2018.csv"
# The official counts, used only when data_manifests/ is not beside the package
# (an install from a wheel); a test keeps them equal to data_manifests/kermany2018.csv.
KERMANY_COUNTS = {
    ("train", "NORMAL"): 1341,
    ("train", "PNEUMONIA"): 3875,
    ("test", "NORMAL"): 234,
    ("test", "PNEUMONIA"): 390,
}


def kermany_manifest_path() -> Path | None:
    """data_manifests/kermany2018.csv of this checkout (featx/data/../../data_manifests), or None when not shipped."""
    candidate = Path(__file__).resolve().parents[2] / "data_manifests" / KERMANY_MANIFEST_NAME
    return candidate if candidate.is_file() else None


# ---------------------------------------------------------------- locating the split folders


def _skipped(parts: tuple[str, ...]) -> bool:
    return any(is_ignored(part) for part in parts)


def _plan(names, classes=("NORMAL", "PNEUMONIA")) -> tuple[str, list[tuple[str, str]]]:
    """(root prefix, [(member name, DEST-relative path)]) for an archive or folder listing.

    The root is the folder that holds train/ and test/ class folders, wherever the
    archive nests it (ChestXRay2017/chest_xray/, Kaggle's chest_xray/ and its
    duplicated chest_xray/chest_xray/); __MACOSX and hidden files are ignored. A root
    must hold `classes` in train/ (so the OCT2017 folder of the same Mendeley release
    is never taken). When several qualify, the most images win (shortest on a tie).
    """
    by_prefix: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
    splits_of: dict[tuple[str, ...], set[str]] = defaultdict(set)
    train_classes: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for name in names:
        parts = tuple(part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("", "/"))
        if len(parts) < 3 or _skipped(parts) or ".." in parts:
            continue
        if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
            continue
        split, label, file = parts[-3:]
        if split not in SPLITS:
            continue
        prefix = parts[:-3]
        by_prefix[prefix].append((name, f"{split}/{label}/{file}"))
        splits_of[prefix].add(split)
        if split == "train":
            train_classes[prefix].add(label)
    roots = [
        prefix
        for prefix, splits in splits_of.items()
        if {"train", "test"} <= splits and set(classes) <= train_classes[prefix]
    ]
    if not roots:
        return "", []
    best = max(roots, key=lambda prefix: (len(by_prefix[prefix]), -len(prefix)))
    return "/".join(best), sorted(by_prefix[best], key=lambda item: item[1])


def _copy_all(items, open_source, dest: Path, console, description: str) -> int:
    """Copy (source, DEST-relative path) pairs; each file appears atomically."""
    with progress_bar(console, unit="files", transient=True) as progress:
        task = progress.add_task(description, total=len(items))
        for source, relative in items:
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            with open_source(source) as reader, partial.open("wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
            os.replace(partial, target)
            progress.advance(task)
    return len(items)


def _not_kermany(source) -> FetchError:
    return FetchError(
        f"'{source}' has no folder holding train/ and test/ class folders of images; it is not the Kermany "
        f"chest X-ray release (ChestXRay2017.zip from Mendeley Data doi:{KERMANY_DOI}, or Kaggle's "
        f"{KERMANY_KAGGLE_HANDLE})."
    )


def unpack_zip(archive, dest, console, _depth: int = 0) -> tuple[str, int]:
    """Unpack the Kermany images of a zip into dest/{split}/{class}/ (nested zips one level deep)."""
    archive = Path(archive)
    if not archive.is_file():
        raise FetchError(f"Archive '{archive}' does not exist; pass the path of the downloaded .zip.")
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info.filename for info in bundle.infolist() if not info.is_dir()]
            root, items = _plan(members)
            if not items:
                inner = [m for m in members if m.lower().endswith(".zip") and not _skipped(PurePosixPath(m).parts)]
                if inner and _depth == 0:
                    chest = [m for m in inner if "chest" in m.lower()] or inner
                    dest.mkdir(parents=True, exist_ok=True)
                    with tempfile.TemporaryDirectory(dir=dest) as scratch:
                        path = Path(scratch) / "inner.zip"
                        with bundle.open(chest[0]) as reader, path.open("wb") as writer:
                            shutil.copyfileobj(reader, writer, 1 << 20)
                        root, count = unpack_zip(path, dest, console, _depth=1)
                    return f"{chest[0]}!{root}", count
                raise _not_kermany(archive)
            count = _copy_all(items, bundle.open, dest, console, "unpacking")
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
        raise FetchError(
            f"Archive '{archive}' is corrupt or not a zip file ({error}); download it again "
            f"(Mendeley Data doi:{KERMANY_DOI} or Kaggle {KERMANY_KAGGLE_HANDLE})."
        ) from None
    return root, count


def copy_tree(source, dest, console) -> tuple[str, int]:
    """Copy the Kermany images of an unpacked download (e.g. kagglehub's cache) into dest."""
    source = Path(source)
    names = [file.relative_to(source).as_posix() for file in walk_files(source)]
    root, items = _plan(names)
    if not items:
        raise _not_kermany(source)
    count = _copy_all(items, lambda name: (source / name).open("rb"), dest, console, "copying")
    return root, count


# ---------------------------------------------------------------- checking an unpacked copy


def _found_counts(dest: Path) -> dict[tuple[str, str], int]:
    counts: Counter = Counter()
    for split in SPLITS:
        split_dir = dest / split
        if not split_dir.is_dir():
            continue
        for label_dir in split_dir.iterdir():
            if label_dir.is_dir() and not is_ignored(label_dir.name):
                counts[(split, label_dir.name)] = sum(
                    1 for f in label_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                )
    return dict(counts)


def _split_order(item) -> tuple[int, str]:
    (split, label), _ = item
    return SPLITS.index(split), label


def verify_unpacked(dest, expected_manifest=None) -> list[str]:
    """Check dest against the manifest (every listed file present); FetchError on a shortfall, notes otherwise.

    Without a manifest, the counts of KERMANY_COUNTS are the reference.
    """
    dest = Path(dest)
    found = _found_counts(dest)
    notes = []
    if expected_manifest is not None:
        manifest = read_manifest(expected_manifest)
        listed: dict[tuple[str, str], list[str]] = defaultdict(list)
        for path, labels, split in zip(manifest.paths, manifest.labels, manifest.splits):
            listed[(split, labels[0])].append(path)
        for (split, label), paths in sorted(listed.items(), key=_split_order):
            missing = [p for p in paths if not (dest / p).is_file()]
            if missing:
                raise FetchError(
                    f"Expected {len(paths):,} {split}/{label} images listed in '{expected_manifest}' under '{dest}', "
                    f"found {len(paths) - len(missing):,} of them ({found.get((split, label), 0):,} files in the folder; "
                    f"missing e.g. {missing[0]!r}); the archive is incomplete or a different release."
                )
        known = set(manifest.paths)
        extra = Counter()
        for split, label in found:
            folder = dest / split / label
            extra[f"{split}/{label}"] += sum(
                1
                for f in folder.iterdir()
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and f"{split}/{label}/{f.name}" not in known
            )
        extra = {key: n for key, n in extra.items() if n}
        if extra:
            detail = ", ".join(f"{key} {n}" for key, n in sorted(extra.items()))
            notes.append(
                f"{sum(extra.values())} image(s) are not in the manifest and will not be used ({detail}); "
                "Kaggle moved 16 of the official training images into val/, Mendeley keeps them in train/."
            )
        return notes
    for (split, label), expected in sorted(KERMANY_COUNTS.items(), key=_split_order):
        got = found.get((split, label), 0)
        if got < expected:
            raise FetchError(
                f"Expected {expected:,} {split}/{label} images under '{dest}', found {got:,}; "
                "the archive is incomplete or a different release."
            )
        if got > expected:
            notes.append(f"{split}/{label} holds {got - expected} image(s) more than the official {expected:,}.")
    return notes


# ---------------------------------------------------------------- featx fetch


@dataclass(frozen=True)
class FetchSummary:
    dataset: str
    dest: Path
    source: str  # "zip:<path>" | "kagglehub:<handle>"
    root_in_source: str
    files: int
    counts: dict[tuple[str, str], int]
    manifest: Path | None
    notes: tuple[str, ...]


def _kagglehub_download(console) -> Path:
    try:
        import kagglehub
    except ImportError:
        raise FetchError(
            "kagglehub is not installed; run `pip install featx[kaggle]` (or `pip install kagglehub`), "
            f"or download the archive by hand from Mendeley Data (doi:{KERMANY_DOI}) and pass --from-zip PATH."
        ) from None
    from featx.config import kaggle_credentials_present

    if not kaggle_credentials_present():
        raise FetchError(
            "No Kaggle credentials found; set the KAGGLE_USERNAME and KAGGLE_KEY environment variables or put "
            "kaggle.json (kaggle.com > Settings > API > Create New Token) in ~/.kaggle/, or pass --from-zip PATH "
            f"with the archive from Mendeley Data (doi:{KERMANY_DOI})."
        )
    console.print(f"Downloading {KERMANY_KAGGLE_HANDLE} with kagglehub (about 1.2 GB)...")
    try:
        return Path(kagglehub.dataset_download(KERMANY_KAGGLE_HANDLE))
    except Exception as error:  # network, auth, quota: all reported as one sentence
        raise FetchError(
            f"kagglehub could not download {KERMANY_KAGGLE_HANDLE} ({type(error).__name__}: {error}); "
            "check the credentials and network, or pass --from-zip PATH."
        ) from None


def fetch_kermany(dest, from_zip=None, expected_manifest="default", console=None) -> FetchSummary:
    """Unpack Kermany 2018 into dest/{train,test}/<class>/ and check it.

    expected_manifest: "default" = data_manifests/kermany2018.csv when shipped beside
    the package (else the built-in official counts), None = the built-in counts, or a path.
    """
    from rich.console import Console

    console = console or Console(quiet=True)
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise FetchError(f"Destination '{dest}' is a file; pass a folder to unpack into.")
    if expected_manifest == "default":
        expected_manifest = kermany_manifest_path()
    if from_zip is not None:
        dest.mkdir(parents=True, exist_ok=True)
        root, files = unpack_zip(from_zip, dest, console)
        source = f"zip:{from_zip}"
    else:
        download = _kagglehub_download(console)
        dest.mkdir(parents=True, exist_ok=True)
        if download.is_file() and zipfile.is_zipfile(download):
            root, files = unpack_zip(download, dest, console)
        else:
            root, files = copy_tree(download, dest, console)
        source = f"kagglehub:{KERMANY_KAGGLE_HANDLE}"
    notes = verify_unpacked(dest, expected_manifest)
    return FetchSummary(
        dataset="kermany",
        dest=dest,
        source=source,
        root_in_source=root or ".",
        files=files,
        counts=_found_counts(dest),
        manifest=Path(expected_manifest) if expected_manifest is not None else None,
        notes=tuple(notes),
    )


def fetch_command(dataset, dest, from_zip, console, expected_manifest="default") -> None:
    """`featx fetch DATASET --dest DIR [--from-zip PATH]`."""
    from rich.table import Table

    if dataset not in DATASETS:
        raise FetchError(one_of_message("dataset", dataset, DATASETS))
    summary = fetch_kermany(dest, from_zip=from_zip, expected_manifest=expected_manifest, console=console)
    console.print(
        f"Kermany 2018 from {summary.source} (folder '{summary.root_in_source}') into {summary.dest}", soft_wrap=True
    )
    table = Table(title="Kermany 2018 images")
    table.add_column("split")
    table.add_column("class")
    table.add_column("images", justify="right")
    for (split, label), n in sorted(summary.counts.items(), key=_split_order):
        table.add_row(split, label, f"{n:,}")
    console.print(table)
    for note in summary.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(f"[green]{summary.files:,} files unpacked; every image of the official split is present.[/green]")
    if summary.manifest is not None:
        manifest = summary.manifest
        console.print("Next:")
        console.print(f"  featx manifest check {manifest} --data-root {summary.dest}", soft_wrap=True)
        console.print(
            f"  featx extract --backbone resnet50 --manifest {manifest} --data-root {summary.dest} --out features",
            soft_wrap=True,
        )
    else:
        manifest = summary.dest / "manifest.csv"
        console.print(
            "Next (data_manifests/kermany2018.csv is not beside this install; it is in the featx repository):"
        )
        console.print(f"  featx manifest scan {summary.dest} --dataset kermany -o {manifest}", soft_wrap=True)
        console.print(
            f"  featx extract --backbone resnet50 --manifest {manifest} --data-root {summary.dest} --out features",
            soft_wrap=True,
        )
