"""What engines run and return: any unit of work handed to them (the `Work` protocol), `Rows` in row order.

Engines import no stage. The unit itself (build the backbones from recipes, decode and embed a
range of rows) is stage one's: `featx.extract.work.EmbedRequest`. An engine calls the unit's
`build(console)` once in each process that embeds (this one, or every Ray actor), then asks the
`Embedder` it returns for the Rows of row ranges.

Bits depend on how rows are grouped into batches (a ResNet50 on CPU gives other bits for an
image alone than inside a batch of 32), so every engine cuts batches on one grid: rows start,
start + batch_size, ... from the first row still to do. The local engine embeds the whole run as
one range; the Ray engine hands out fixed row ranges whose starts lie on the same grid (a range is
a whole number of batches), so a row meets the same batch neighbours whichever engine, actor or
retry embeds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

# A Ray work item is this many batches unless --ray-range-rows says otherwise (1,024 rows at batch 32).
RANGE_BATCHES = 32


class Embedder(Protocol):
    """A unit's models, built in the process that embeds."""

    def rows(self, lo: int, hi: int, workers: int | None = None) -> Iterator[Rows]:
        """The Rows of rows lo..hi in row order, one per batch cut every batch_size rows from lo."""
        ...


class Work(Protocol):
    """A unit of work an engine runs (picklable: Ray sends it to every actor once)."""

    batch_size: int
    first_rows: Mapping[str, int]  # per output key, the first row it still needs
    workers: int | None
    shards: Path | None  # Ray: where actors write range shards (engines/shards.py); None: none

    @property
    def start(self) -> int: ...

    @property
    def n_rows(self) -> int: ...

    def build(self, console=None) -> Embedder: ...

    def identity(self) -> list:
        """JSON-able: what decides the bits of a range (a shard of another identity is never reused)."""
        ...


@dataclass
class Rows:
    """Consecutive embedded rows start..start+len(ok): decode outcome and each backbone's embeddings.

    `embeddings[key] = (first, {pooling: array})`: backbone `key` embedded rows first..stop (a backbone
    whose cache was further along skipped the rows before its first row).
    """

    start: int
    ok: np.ndarray  # (n,) bool: False where the image could not be read (the writer stores zeros there)
    errors: list[tuple[int, str]]  # (row, reason) for each unreadable row, in row order
    embeddings: dict[str, tuple[int, dict[str, np.ndarray]]]
    sha256: list[str] = field(default_factory=list)  # of each row's file bytes ("" where unread), for the cache
    worker: str = ""  # who embedded them ("pid@host" on Ray): for logs and tests

    @property
    def stop(self) -> int:
        return self.start + len(self.ok)

    def __len__(self) -> int:
        return len(self.ok)

    def part(self, key: str):
        """(first row, embeddings, ok, errors, sha256) of backbone `key` in these rows; None when it embedded none."""
        if key not in self.embeddings:
            return None
        first, embeddings = self.embeddings[key]
        skip = first - self.start
        errors = [(row, reason) for row, reason in self.errors if row >= first]
        return first, embeddings, self.ok[skip:], errors, self.sha256[skip:]


def merge_rows(parts: Sequence[Rows], worker: str = "") -> Rows:
    """Consecutive Rows as one (a Ray range is returned whole)."""
    embeddings: dict[str, tuple[int, dict[str, np.ndarray]]] = {}
    for key in dict.fromkeys(key for part in parts for key in part.embeddings):
        pieces = [part.embeddings[key] for part in parts if key in part.embeddings]
        poolings = pieces[0][1].keys()
        embeddings[key] = (
            pieces[0][0],
            {pooling: np.concatenate([values[pooling] for _, values in pieces]) for pooling in poolings},
        )
    return Rows(
        start=parts[0].start,
        ok=np.concatenate([part.ok for part in parts]),
        errors=[error for part in parts for error in part.errors],
        embeddings=embeddings,
        sha256=[digest for part in parts for digest in part.sha256],
        worker=worker,
    )


def row_ranges(start: int, n_rows: int, range_rows: int) -> list[tuple[int, int]]:
    """The fixed ranges [k * range_rows, (k + 1) * range_rows) that hold rows start..n_rows, the first cut at start.

    A resumed run thus submits only rows not yet written, and every range but the first starts where an
    uninterrupted run's would.
    """
    first = (start // range_rows) * range_rows
    ranges = [(max(lo, start), min(lo + range_rows, n_rows)) for lo in range(first, n_rows, range_rows)]
    return [(lo, hi) for lo, hi in ranges if lo < hi]


def default_range_rows(batch_size: int) -> int:
    """RANGE_BATCHES batches: 1,024 rows at the default batch size of 32."""
    return RANGE_BATCHES * int(batch_size)
