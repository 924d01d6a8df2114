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
            speed = rate(task)
            text = f"  -- {unit}/s" if speed is None else f"{speed:6.1f} {unit}/s"
            return Text(text, style="progress.data.speed")

    class RemainingColumn(TimeRemainingColumn):
        def render(self, task) -> Text:
            speed = rate(task)
            if task.finished or task.total is None or not speed:
                return super().render(task)
            seconds = int(max(0.0, task.total - task.completed) / speed)
            minutes, seconds = divmod(seconds, 60)
            hours, minutes = divmod(minutes, 60)
            return Text(f"{hours:d}:{minutes:02d}:{seconds:02d}", style="progress.remaining")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        RemainingColumn(),
        console=console,
        transient=transient,
    )


def rate(task) -> float | None:
    """Units per second: rich's recent speed once it has two samples, before that the average since the
    start, so a rate and an ETA show from the first completed unit (rich alone waits for the second)."""
    speed = task.finished_speed or task.speed
    if speed is None and task.completed and task.elapsed:
        speed = task.completed / task.elapsed
    return speed


def track(
    items: Iterable[T], total: int, description: str, console: Console | None, unit: str = "files"
) -> Iterator[T]:
    """Yield the items while a transient bar counts them."""
    with progress_bar(console, unit=unit, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
