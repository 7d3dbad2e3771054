"""A rich progress bar for the load generator, on stderr so that stdout stays its result line."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from udpchat.load import LoadConfig


class LoadProgress:
    """Shows time elapsed against the duration, and messages sent with their rate."""

    def __init__(self, config: LoadConfig) -> None:
        self._progress = Progress(
            TextColumn("[bold]load[/bold]"),
            BarColumn(),
            TextColumn("{task.fields[sent]:>10,} sent  {task.fields[rate]:>9,.0f} msg/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("load", total=config.duration_s, sent=0, rate=0.0)

    def update(self, sent: int, elapsed_s: float) -> None:
        """The first update starts the bar, so that a load refused before it sends anything
        (a remote target, say) leaves its error alone on stderr, without the bar's blank line."""
        rate = sent / elapsed_s if elapsed_s > 0 else 0.0
        self._progress.update(self._task, completed=elapsed_s, sent=sent, rate=rate)
        if not self._progress.live.is_started:
            self._progress.start()

    def __enter__(self) -> LoadProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress.live.is_started:  # rich ends a bar off a terminal with a blank line
            self._progress.stop()
