"""The local engine (the default): this process decodes on threads and runs every backbone itself.

It is the path featx always had: one `iter_batches` stream from the first row still to
do, decoded `prefetch` batches ahead, each batch pushed through every backbone of the
group. Nothing here waits on anything but the decode and the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from featx.engines.work import EmbedRequest, Rows, embed_batches


class LocalEngine:
    """Embeds in this process; `open` builds the models, the rows stream from the iterator it yields."""

    name = "local"

    def describe(self) -> str:
        return "local engine (this process)"

    @contextmanager
    def open(self, request: EmbedRequest, console) -> Iterator[Iterator[Rows]]:
        from featx.data.images import iter_batches

        forwards = {}
        for key, recipe in request.recipes.items():
            height, width = recipe.image_size
            weights = "no weights" if recipe.weights.kind == "none" else f"{recipe.weights.label} weights"
            console.print(f"Building {key} ({weights}, {height}x{width}) ...")
            forwards[key] = recipe.build()
        batches = iter_batches(
            request.paths,
            request.image_size,
            request.resize_mode,
            batch_size=request.batch_size,
            start=request.start,
            workers=request.workers,
            **request.decode_options,
        )
        rows = embed_batches(batches, forwards, request.first_rows)
        try:
            yield rows
        finally:
            rows.close()
            batches.close()  # stops the decode threads now, not when the generator is collected
