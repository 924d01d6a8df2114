"""The unit of work both engines run: decode a run of manifest rows in batches, embed each batch.

Bits depend on how rows are grouped into batches (a ResNet50 on CPU gives other
bits for an image alone than inside a batch of 32), so every engine cuts batches
on one grid: rows start, start + batch_size, ... from the first row still to do,
exactly as `featx.data.images.iter_batches` cuts them. The local engine streams the
whole run that way; the Ray engine hands out fixed row ranges whose starts lie on
the same grid (a range is a whole number of batches), so a row meets the same
batch neighbours whichever engine, actor or retry embeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from featx.extract.backbones import WeightsInfo

# A Ray work item is this many batches unless --ray-range-rows says otherwise (1,024 rows at batch 32).
RANGE_BATCHES = 32


@dataclass(frozen=True)
class ModelRecipe:
    """How to build one backbone's compiled forward step: small and picklable, so a Ray actor can build it."""

    backbone: str
    weights: WeightsInfo  # a weights file must be readable where the recipe is built
    image_size: tuple[int, int]
    poolings: tuple[str, ...]
    mixed_precision: bool = False

    def build(self) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """The backbone built and its forward step traced once (so rates and ETAs are steady from the start)."""
        from featx.extract import backbones
        from featx.extract.forward import forward_step

        spec = backbones.get_backbone(self.backbone)
        model = backbones.create_backbone(
            spec, self.weights, self.image_size, self.poolings, mixed_precision=self.mixed_precision
        )
        predict = forward_step(model, self.image_size, self.poolings)
        predict(np.zeros((1, *self.image_size, 3), dtype=np.float32))
        return predict


@dataclass(frozen=True)
class EmbedRequest:
    """What an engine embeds: the rows, how they are decoded and batched, and the backbones to run.

    `first_rows[key]` is the first row backbone `key` still needs (its cache's n_done); rows before
    min(first_rows) are not decoded. `decode_options` go to iter_batches unchanged (e.g. a filesystem).
    """

    paths: Sequence  # one per manifest row: a local path, or a path inside `decode_options["filesystem"]`
    image_size: tuple[int, int]
    resize_mode: str
    batch_size: int
    recipes: Mapping[str, ModelRecipe]
    first_rows: Mapping[str, int]
    workers: int | None = None
    decode_options: Mapping[str, Any] = field(default_factory=dict)
    shards: Path | None = None  # Ray: the folder actors write range shards to (engines/shards.py); None: none

    @property
    def start(self) -> int:
        return min(self.first_rows.values())

    @property
    def n_rows(self) -> int:
        return len(self.paths)


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


def embed_batches(
    batches: Iterable, forwards: Mapping[str, Callable], first_rows: Mapping[str, int], offset: int = 0
) -> Generator[Rows, None, None]:
    """One Rows per decoded batch (featx.data.images.Batch), each backbone run on the whole batch.

    `offset` is the manifest row of the batches' row 0 (a Ray range starts mid-manifest). A backbone
    whose first row falls inside a batch embeds that batch from its first row on, as the local engine
    always has.
    """
    for batch in batches:
        start = offset + batch.start
        embeddings = {}
        for key, forward in forwards.items():
            skip = max(0, first_rows[key] - start)
            if skip < len(batch):
                embeddings[key] = (start + skip, forward(batch.images[skip:]))
        failed = np.flatnonzero(~batch.ok).tolist()
        errors = [(start + row, reason) for row, (_, reason) in zip(failed, batch.errors)]
        sha256 = list(getattr(batch, "sha256", None) or [""] * len(batch))
        yield Rows(start=start, ok=batch.ok, errors=errors, embeddings=embeddings, sha256=sha256)


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
