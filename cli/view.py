"""Terminal views of a generation: the live denoising canvas, a plain progress log, or nothing.

Views consume engine events only. The live view draws committed text above and the in-flight canvas
below, each position styled by its state on this pass (accepted now, still noise, unchanged) and
dimmed by confidence, under a header with canvas, pass, temperature, entropy and speed. Redraws are
throttled so drawing stays a small fraction of generation time.
"""

from __future__ import annotations

import time

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from dgemma_mlx.events import CanvasEvent, FinishEvent, GenerationStats, PassEvent

REDRAW_INTERVAL = 1 / 12  # seconds between redraws


def position_style(accepted: bool, changed: bool, confidence: float) -> str:
    if accepted:
        return "bold green" if confidence > 0.9 else "green"
    if changed:
        return "yellow" if confidence > 0.3 else "dim yellow"
    return "cyan" if confidence > 0.5 else "dim"


class LiveView:
    """Rich Live rendering of the canvas; use as a context manager and feed every event."""

    def __init__(self, console: Console, tokenizer, title: str = "dgemma"):
        self.console = console
        self.tokenizer = tokenizer
        self.title = title
        self.committed: list[int] = []
        self.live = Live(console=console, auto_refresh=False, transient=True)
        self.last_draw = 0.0
        self.last_pass: PassEvent | None = None
        self.tokens_done = 0

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def handle(self, event) -> None:
        if isinstance(event, PassEvent):
            self.last_pass = event
            now = time.perf_counter()
            if now - self.last_draw >= REDRAW_INTERVAL:
                self.live.update(self._frame(event), refresh=True)
                self.last_draw = now
        elif isinstance(event, CanvasEvent):
            self.committed.extend(int(t) for t in event.tokens[0])
            self.tokens_done += event.tokens.shape[1]

    def _pieces(self, ids) -> list[str]:
        if self.tokenizer is None:
            return [f"{int(i)} " for i in ids]
        return self.tokenizer.token_strings([int(i) for i in ids])

    def _frame(self, event: PassEvent):
        mean_entropy = float(np.mean(event.entropy[0]))
        speed = self.tokens_done / event.elapsed if event.elapsed > 0 else 0.0
        header = Text.assemble(
            (self.title, "bold"),
            f"  canvas {event.canvas_index + 1}",
            f"  pass {event.pass_index}/{event.max_steps}",
            f"  T={event.temperature:.2f}",
            f"  H̄={mean_entropy:.3f}",
            f"  accepted {int(event.accepted[0].sum())}/{event.accepted.shape[1]}",
            f"  {speed:.1f} tok/s",
            style="on grey11",
        )
        done = Text(self._text(self.committed), style="white")
        canvas = Text()
        row = (event.draft[0], event.accepted[0], event.changed[0], event.confidence[0])
        rows = zip(self._pieces(row[0]), *row[1:], strict=True)
        for piece, acc, ch, conf in rows:
            canvas.append(piece, style=position_style(bool(acc), bool(ch), float(conf)))
        return Group(header, done, canvas)

    def _text(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class PlainView:
    """One line per committed canvas on stderr; no ANSI, for logs and pipes."""

    def __init__(self, console: Console):
        self.console = console

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def handle(self, event) -> None:
        if isinstance(event, CanvasEvent):
            line = f"canvas {event.canvas_index + 1}: {event.passes} passes, {event.elapsed:.2f} s"
            self.console.print(line, highlight=False)


class NoView(PlainView):
    def handle(self, event) -> None:
        return None


def make_view(kind: str, console: Console, tokenizer, title: str = "dgemma"):
    if kind == "auto":
        kind = "live" if console.is_terminal else "plain"
    if kind == "live":
        return LiveView(console, tokenizer, title)
    return PlainView(console) if kind == "plain" else NoView(console)


def print_stats(console: Console, stats: GenerationStats) -> None:
    console.print(
        f"[dim]{stats.prompt_tokens} prompt tokens in {stats.prompt_time:.2f} s · "
        f"{sum(stats.generated_tokens)} tokens in {stats.generation_time:.2f} s "
        f"({stats.tokens_per_second:.1f} tok/s) · {stats.canvases} canvas(es), "
        f"{sum(stats.passes)} passes, {np.mean(stats.tokens_per_forward):.2f} tokens/forward · "
        f"peak {stats.peak_memory_gb:.2f} GB[/]",
        highlight=False,
    )


def consume(events, view) -> FinishEvent:
    """Drive a view with an event stream; return the final event."""
    final = None
    with view:
        for event in events:
            view.handle(event)
            if isinstance(event, FinishEvent):
                final = event
    assert final is not None
    return final


def make_progress(console: Console, total: int):
    """Prompts done, rate and ETA; Rich disables the animation itself when not on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
