"""What every adapter shares: reading a release's CSV tables, finding its images, writing and checking the manifest."""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from featx.data.manifest import SPLITS, check_command, write_manifest
from featx.errors import ManifestError

SHOWN = 3  # names quoted in an error before "..."
NEGATIVE = "negative"  # the class of a row with none of the chosen labels (sorted first: manifest.NEGATIVE_NAMES)


@dataclass(frozen=True)
class Table:
    """A CSV table of a release: its file, header and records (stripped values), with their line numbers."""

    path: Path
    header: tuple[str, ...]
    records: list[tuple[int, dict[str, str]]]


def first(names: Iterable) -> str:
    """The first few names, quoted, for an error sentence."""
    names = list(names)
    return ", ".join(repr(str(n)) for n in names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def release_folder(root, what: str, release: str) -> Path:
    """root as a Path; ManifestError naming what to pass when it is not a folder."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"The {what} folder '{root}' is not a folder; pass --root the {release} folder.")
    return root


def release_file(root: Path, names: Sequence[str], what: str, release: str) -> Path:
    """The first of `names` under root (e.g. x.csv.gz, then x.csv); ManifestError naming what to pass when none exists."""
    for name in names:
        if (root / name).is_file():
            return root / name
    raise ManifestError(
        f"The {what} ({' or '.join(repr(n) for n in names)}) is not in '{root}'; pass --root the {release} folder."
    )


def read_table(path: Path, required: Sequence[str], what: str) -> Table:
    """A .csv or .csv.gz file with at least the `required` columns and one row; ManifestError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"The {what} '{path}' does not exist.")
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as error:
        raise ManifestError(f"The {what} '{path}' is not a readable CSV file ({type(error).__name__}).") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = tuple(name.strip() for name in (reader.fieldnames or []))
    reader.fieldnames = list(header)
    missing = [name for name in required if name not in header]
    if missing:
        shown = list(header[:8]) + (["..."] if len(header) > 8 else [])
        raise ManifestError(f"The {what} '{path}' is missing the column(s) {missing}; found {shown}.")
    records = [(reader.line_num, {k: (v or "").strip() for k, v in record.items() if k}) for record in reader]
    if not records:
        raise ManifestError(f"The {what} '{path}' has a header but no rows.")
    return Table(path, header, records)


def check_present(root: Path, paths: Sequence[str], what: str) -> None:
    """ManifestError (count and first names) when any of the relative paths is not a file under root."""
    missing = [path for path in paths if not (root / path).is_file()]
    if missing:
        raise ManifestError(
            f"{len(missing):,} of the {len(paths):,} {what} are not under '{root}' ({first(missing)}); "
            "unpack the whole release there, or point --root at the folder that holds it."
        )


def metadata_notes(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    """One line per metadata column: its most common values and how many rows lack one."""
    notes = []
    for column in columns:
        values = Counter(str(row.get(column) or "") for row in rows)
        missing = values.pop("", 0)
        if column == "age":
            ages = sorted(float(v) for v in values.elements())
            text = f"median {ages[len(ages) // 2]:g}, range {ages[0]:g}-{ages[-1]:g}" if ages else "none"
        else:
            text = ", ".join(f"{value} {n / len(rows):.0%}" for value, n in values.most_common(4))
            text += ", ..." if len(values) > 4 else ""
        notes.append(
            f"metadata {column}: {text or 'none'}" + (f" ({missing:,} rows without a value)" if missing else "")
        )
    return notes


def sort_rows(rows: list[dict]) -> list[dict]:
    """Rows in manifest order: split (train, val, test), then path."""
    return sorted(rows, key=lambda row: (SPLITS.index(row["split"]), row["path"]))


def write_and_check(rows: list[dict], out, data_root: Path, title: str, notes: Sequence[str], console) -> bool:
    """Write the manifest, print the notes, `featx manifest check` it and the next command; True when it is clean."""
    written = write_manifest(rows, out)
    console.print(f"[bold]{title}[/bold]: {len(rows):,} images", soft_wrap=True)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    clean = check_command(written, data_root, verify_sha256=False, console=console)
    console.print(f"Wrote {len(rows):,} rows to {written}", soft_wrap=True)
    console.print(
        f"Next: featx extract --backbone densenet121 --manifest {written} --data-root {data_root} --out features",
        soft_wrap=True,
    )
    return clean
