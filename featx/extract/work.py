"""Stage one's unit of work: build backbones from recipes, then decode and embed any range of manifest rows.

An engine (featx/engines) runs this unit without knowing what is inside it: it calls
`EmbedRequest.build(console)` once in each process that embeds (this one, or every Ray
actor) and asks the `Embedder` it gets for the `Rows` of a row range. Bits depend on how
rows are grouped into batches (a ResNet50 on CPU gives other bits for an image alone than
inside a batch of 32), so a range is decoded in batches of `batch_size` from its first row,
exactly as `featx.data.images.iter_batches` cuts them; engines only hand out ranges whose
starts lie on that grid (featx.engines.work.row_ranges).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featx.engines.work import Rows

if TYPE_CHECKING:
    from featx.extract.backbones import WeightsInfo


@dataclass(frozen=True)
class ModelRecipe:
    """How to build one backbone's compiled forward step: small and picklable, so a Ray actor can build it."""

    backbone: str  # a registry name, or a source string (hf://..., a preset folder, onnx:FILE)
    weights: WeightsInfo  # a weights file must be readable where the recipe is built
    image_size: tuple[int, int]
    poolings: tuple[str, ...]
    mixed_precision: bool = False

    def build(self) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        """The backbone built and its forward step traced once (so rates and ETAs are steady from the start)."""
        from featx.extract import backbones
        from featx.extract.forward import forward_step

        spec = backbones.get_backbone(self.backbone)
        if spec.source == "onnx":
            from featx.extract.onnx import onnx_forward

            predict = onnx_forward(spec, self.weights, self.image_size, self.poolings)
            predict(np.zeros((1, *self.image_size, 3), dtype=np.float32))
            return predict
        model = backbones.create_backbone(
            spec, self.weights, self.image_size, self.poolings, mixed_precision=self.mixed_precision
        )
        predict = forward_step(
            model, self.image_size, self.poolings, max_batch=backbones.forward_batch_limit(spec, self.image_size)
        )
        predict(np.zeros((1, *self.image_size, 3), dtype=np.float32))
        return predict

    def describe(self) -> str:
        height, width = self.image_size
        weights = "no weights" if self.weights.kind == "none" else f"{self.weights.label} weights"
        return f"{self.backbone} ({weights}, {height}x{width})"


@dataclass(frozen=True)
class EmbedRequest:
    """What an engine embeds: the rows, how they are decoded and batched, and the backbones to run.

    `first_rows[key]` is the first row backbone `key` still needs (its cache's n_done); rows before
    min(first_rows) are not decoded. `decode_options` go to iter_batches unchanged (e.g. a filesystem).
    The engines see it through the `featx.engines.work.Work` protocol only.
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

    def build(self, console=None) -> Embedder:
        """Every recipe built in this process ("Building ..." per backbone on `console` when given)."""
        forwards = {}
        for key, recipe in self.recipes.items():
            if console is not None:
                console.print(f"Building {recipe.describe()} ...", highlight=False)
            forwards[key] = recipe.build()
        return Embedder(self, forwards)

    def identity(self) -> list:
        """What decides the bits of a range (shard fingerprints): recipes, size, decode, batching, the paths."""
        import hashlib

        paths = hashlib.sha256("\n".join(str(path) for path in self.paths).encode()).hexdigest()
        decode = {key: value for key, value in self.decode_options.items() if isinstance(value, str | int | float)}
        return [
            sorted((key, repr(recipe)) for key, recipe in self.recipes.items()),
            list(self.image_size),
            self.resize_mode,
            int(self.batch_size),
            sorted(decode.items()),
            paths,
        ]


class Embedder:
    """An EmbedRequest's built backbones: the Rows of any row range, batch by batch."""

    def __init__(self, request: EmbedRequest, forwards: Mapping[str, Callable]):
        self.request = request
        self.forwards = dict(forwards)

    def rows(self, lo: int, hi: int, workers: int | None = None) -> Generator[Rows, None, None]:
        """One Rows per batch of rows lo..hi, batches cut every batch_size rows from lo."""
        from featx.data.images import iter_batches

        request = self.request
        batches = iter_batches(
            list(request.paths[lo:hi]),
            request.image_size,
            request.resize_mode,
            batch_size=request.batch_size,
            workers=request.workers if workers is None else workers,
            **request.decode_options,
        )
        try:
            yield from embed_batches(batches, self.forwards, request.first_rows, offset=lo)
        finally:
            batches.close()  # stops the decode threads now, not when the generator is collected


def embed_batches(
    batches: Iterable, forwards: Mapping[str, Callable], first_rows: Mapping[str, int], offset: int = 0
) -> Generator[Rows, None, None]:
    """One Rows per decoded batch (featx.data.images.Batch), each backbone run on the whole batch.

    `offset` is the manifest row of the batches' row 0 (a range starts mid-manifest). A backbone
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
