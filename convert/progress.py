"""Progress for long conversions: a Rich bar (bytes, speed, ETA) on a terminal, plain lines otherwise.

Converting the real checkpoint reads ~52 GB, so users need a rate and an ETA; logs and CI need
something that does not fill the file with carriage returns, hence one line per 10% when not a TTY.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from dgemma_mlx.units import fmt_bytes


@contextmanager
def byte_progress(total: int, label: str, console: Console | None = None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n_bytes)`; renders on `console` (stderr by default)."""
    console = console or Console(stderr=True)
    if console.is_terminal:
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
        return
    plain = PlainProgress(total, label, console)
    yield plain.advance
    plain.done()


class PlainProgress:
    """One line per 10% step: percentage, bytes, rate and a remaining-time estimate."""

    def __init__(self, total: int, label: str, console: Console, step: float = 0.1):
        self.total, self.label, self.console, self.step = max(total, 1), label, console, step
        self.done_bytes = 0
        self.next_mark = step
        self.started = time.perf_counter()

    def advance(self, n: int) -> None:
        self.done_bytes += n
        fraction = self.done_bytes / self.total
        if fraction >= self.next_mark and fraction < 1:
            self._line(fraction)
            while self.next_mark <= fraction:
                self.next_mark += self.step

    def done(self) -> None:
        self._line(self.done_bytes / self.total)

    def _line(self, fraction: float) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.done_bytes / elapsed
        left = (self.total - self.done_bytes) / rate if rate > 0 else 0.0
        eta = f", ~{left:.0f} s left" if fraction < 1 else f" in {elapsed:.1f} s"
        self.console.print(
            f"{self.label}: {fraction:4.0%} ({fmt_bytes(self.done_bytes)} of {fmt_bytes(self.total)}, "
            f"{fmt_bytes(rate)}/s{eta})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
