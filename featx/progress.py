"""The one progress-bar factory: description, bar, done/total, rate, elapsed and ETA on a rich console."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

T = TypeVar("T")


def progress_bar(console: Console | None, unit: str = "img", transient: bool = False) -> Progress:
    """A rich Progress whose tasks show their description, a bar, N/M, `<rate> <unit>/s`, elapsed time and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            text = f"  -- {unit}/s" if speed is None else f"{speed:6.1f} {unit}/s"
            return Text(text, style="progress.data.speed")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


def track(
    items: Iterable[T], total: int, description: str, console: Console | None, unit: str = "files"
) -> Iterator[T]:
    """Yield the items while a transient bar counts them."""
    with progress_bar(console, unit=unit, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
