"""The local engine (the default): this process builds the unit's models and embeds every row itself.

It is the path featx always had: one decode stream from the first row still to do, decoded
a few batches ahead on threads, each batch pushed through every backbone of the group.
Nothing here waits on anything but the decode and the forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from featx.engines.work import Rows, Work


class LocalEngine:
    """Embeds in this process; `open` builds the models, the rows stream from the iterator it yields."""

    name = "local"

    def describe(self) -> str:
        return "local engine (this process)"

    @contextmanager
    def open(self, work: Work, console) -> Iterator[Iterator[Rows]]:
        embedder = work.build(console)
        rows = embedder.rows(work.start, work.n_rows)
        try:
            yield rows
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops the decode threads now, not when the generator is collected
