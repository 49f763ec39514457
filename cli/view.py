"""Terminal views of a generation: the live denoising canvas, plain log lines, or nothing.

Views consume engine events (`PassEvent`, `CanvasEvent`, `FinishEvent`) and nothing else, so they
never reach into the sampler or the model. They draw on the console they are given (stderr for
`generate`, so the answer alone goes to stdout).

The live view shows committed text above and the in-flight canvas below. Each canvas position is
coloured by its state on this pass, with the same colours as the Sudoku demo: green = accepted this
pass, yellow = still noise (rejected and its prediction moved), cyan = rejected but unchanged since
the last pass; brighter means more confident. A header carries canvas, pass, temperature, mean
entropy, accepted positions and speed.

Drawing runs on the generation thread, so it is throttled adaptively: a redraw happens at most every
`MIN_INTERVAL` seconds, and never more often than keeps drawing under `DRAW_BUDGET` of wall time,
whatever the terminal or model speed (benchmarks/view_overhead.py measures the result).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar

import numpy as np
from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from dgemma_mlx.events import CanvasEvent, FinishEvent, GenerationResult, GenerationStats, PassEvent

from .options import say
from .style import legend, position_style

Final = TypeVar("Final")
MIN_INTERVAL = 1 / 20  # seconds: no terminal needs more than ~20 frames a second
DRAW_BUDGET = 0.02  # the share of wall time drawing may take (docs/MEASUREMENTS.md, "The live view")
MAX_PIECE_CELLS = 16  # a pathological token (a run of 30 spaces) must not eat the canvas
PIECE_CACHE_LIMIT = 65536

class View(Protocol):
    """What commands drive: a context manager that is fed every event."""

    def __enter__(self) -> View: ...

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def handle(self, event: Any) -> None: ...


def printable(text: str, keep_newlines: bool = False) -> str:
    """Text safe to draw: no escape sequences or control characters, visible newlines and tabs.

    Token pieces come from the model; a raw ESC or carriage return would corrupt the terminal.
    """
    out = []
    for ch in text:
        if ch == "\n":
            out.append("\n" if keep_newlines else "↵")
        elif ch == "\t":
            out.append("    " if keep_newlines else "→")
        elif ch.isprintable() or ch in "\u200c\u200d":  # zero-width joiners hold emoji together
            out.append(ch)
        else:
            out.append("·" if not keep_newlines else "")
    return "".join(out)


def crop_cells(text: str, limit: int) -> str:
    if cell_len(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        width = cell_len(ch)
        if used + width > limit - 1:
            break
        out.append(ch)
        used += width
    return "".join(out) + "…"


class Pieces:
    """Display text per token id, cached (the canvas redraws the same ids pass after pass)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}
        self.separator: str | None = None if tokenizer is not None else " "

    def _probe_separator(self, ids: list[int]) -> str:
        """Word-level tokenizers decode pieces without their spaces; SentencePiece keeps them."""
        special = getattr(self.tokenizer, "eos_token_ids", set()) | {0, 1, 2}
        words = [i for i in ids if i not in special][:2]
        if len(words) < 2:
            return ""
        a, b = self.tokenizer.token_strings(words)
        joined = self.tokenizer.decode(words, skip_special_tokens=False)
        return " " if a and b and joined == f"{a} {b}" else ""

    def __call__(self, ids: Iterable[int]) -> list[str]:
        ids = [int(i) for i in ids]
        if self.tokenizer is None:
            return [str(i) for i in ids]
        if self.separator is None:
            self.separator = self._probe_separator(ids)
        missing = [i for i in dict.fromkeys(ids) if i not in self.cache]
        if missing:
            if len(self.cache) + len(missing) > PIECE_CACHE_LIMIT:
                self.cache.clear()
            for i, s in zip(missing, self.tokenizer.token_strings(missing), strict=True):
                self.cache[i] = crop_cells(printable(s), MAX_PIECE_CELLS)
        return [self.cache[i] for i in ids]


def format_stats(stats: GenerationStats) -> str:
    """The one-line summary printed when a generation finishes."""
    generated = sum(stats.generated_tokens)
    passes = sum(stats.passes)
    per_forward = float(np.mean(stats.tokens_per_forward)) if stats.tokens_per_forward else 0.0
    canvases = f"{stats.canvases} canvas{'es' if stats.canvases != 1 else ''}"
    return (
        f"prompt {stats.prompt_tokens} tokens in {stats.prompt_time:.2f} s · "
        f"generated {generated} tokens in {stats.generation_time:.2f} s "
        f"({stats.tokens_per_second:.1f} tok/s) · "
        f"{canvases}, {passes} passes, {per_forward:.2f} tokens/forward · "
        f"peak memory {stats.peak_memory_gb:.2f} GB"
    )


def print_stats(console: Console, stats: GenerationStats) -> None:
    say(console, format_stats(stats), style="dim")


class LiveView:
    """The denoising canvas, redrawn in place on a terminal; disappears when generation ends.

    Only batch row 0 is drawn (the CLI's interactive commands generate one row).
    """

    def __init__(self, console: Console, tokenizer: Any, title: str = "dgemma"):
        self.console = console
        self.title = title
        self.tokenizer = tokenizer
        self.pieces = Pieces(tokenizer)
        # stdout is reserved for the answer: never reroute it; stray stderr lines print above the view.
        self.live = Live(console=console, auto_refresh=False, transient=True, redirect_stdout=False)
        self.committed_ids: list[int] = []
        self.committed_text = ""
        self.committed_tokens = 0
        self.last_event: PassEvent | None = None
        self.last_draw = -float("inf")
        self.interval = MIN_INTERVAL
        self.draw_time = 0.0  # total seconds spent drawing (for tests and benchmarks)
        self.draws = 0

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.live.__exit__(kind, exc, tb)

    def handle(self, event: PassEvent | CanvasEvent | FinishEvent) -> None:
        if isinstance(event, PassEvent):
            self.last_event = event
            self._maybe_draw()
        elif isinstance(event, CanvasEvent):
            row = [int(t) for t in event.tokens[0]]
            self.committed_ids.extend(row)
            pad = getattr(self.tokenizer, "pad_token_id", None)
            self.committed_tokens += sum(1 for t in row if t != pad)
            self.committed_text = self._decode(self.committed_ids)

    def _maybe_draw(self) -> None:
        now = time.perf_counter()
        if now - self.last_draw < self.interval or self.last_event is None:
            return
        self.live.update(self.frame(self.last_event), refresh=True)
        done = time.perf_counter()
        cost = done - now
        self.draw_time += cost
        self.draws += 1
        self.interval = max(MIN_INTERVAL, cost / DRAW_BUDGET)
        self.last_draw = done

    def _decode(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(str(i) for i in ids)
        return printable(self.tokenizer.decode(ids, skip_special_tokens=True), keep_newlines=True)

    def header(self, event: PassEvent) -> Text:
        elapsed = max(event.elapsed, 1e-9)
        speed = f"{self.committed_tokens / elapsed:.1f} tok/s" if self.committed_tokens else "– tok/s"
        length = event.accepted.shape[1]
        parts = [
            (f" {self.title} ", "bold reverse"),
            f" canvas {event.canvas_index + 1}",
            f" · pass {event.pass_index}/{event.max_steps}",
            f" · T {event.temperature:.2f}",
            f" · entropy {float(np.mean(event.entropy[0])):.3f}",
            f" · accepted {int(event.accepted[0].sum())}/{length}",
            f" · {speed}",
        ]
        return Text.assemble(*parts)

    def canvas(self, event: PassEvent) -> Text:
        """The draft (what would be committed now), each position styled by its state and confidence."""
        pieces = self.pieces(event.draft[0])
        states = zip(pieces, event.accepted[0], event.changed[0], event.confidence[0], strict=True)
        styled = [Text(piece, style=position_style(bool(a), bool(c), float(p))) for piece, a, c, p in states]
        return Text(self.pieces.separator or "").join(styled)

    def frame(self, event: PassEvent) -> RenderableType:
        """Header, the tail of the committed text that fits, the canvas, the legend."""
        width = max(1, self.console.width)
        header, canvas, key = self.header(event), self.canvas(event), legend()
        used = sum(len(t.wrap(self.console, width)) for t in (header, canvas, key))
        room = max(1, self.console.height - used - 1)
        parts: list[RenderableType] = [header]
        if self.committed_text:
            # Wrap only the tail: a long answer must not make every frame slower.
            tail = Text(self.committed_text[-room * width * 2 :])
            lines = tail.wrap(self.console, width)
            parts.append(Text("\n").join(lines[-room:]))
        parts += [canvas, key]
        return Group(*parts)


class PlainView:
    """One line per committed canvas, no escape codes: for logs, pipes and CI."""

    def __init__(self, console: Console):
        self.console = console

    def __enter__(self) -> PlainView:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def handle(self, event: PassEvent | CanvasEvent | FinishEvent) -> None:
        if isinstance(event, CanvasEvent):
            line = f"canvas {event.canvas_index + 1}: {event.passes} passes, {event.elapsed:.2f} s"
            say(self.console, line)


class NoView(PlainView):
    def handle(self, event: PassEvent | CanvasEvent | FinishEvent) -> None:
        return None


def make_view(kind: str, console: Console, tokenizer: Any, title: str = "dgemma") -> View:
    """`auto` is live on a terminal and plain otherwise, so redirected runs never get escape codes."""
    if kind == "auto":
        kind = "live" if console.is_terminal else "plain"
    if kind == "live":
        return LiveView(console, tokenizer, title)
    return PlainView(console) if kind == "plain" else NoView(console)


def drive(events: Iterable[Any], view: View, last: type[Final] = FinishEvent) -> Final:  # type: ignore[assignment]
    """Feed every event to `view` (a generation's, or a Sudoku solve's); return the last event of type
    `last`: the `FinishEvent` that carries a generation's result, or a solve's `SudokuResult`."""
    final = None
    with view:
        for event in events:
            view.handle(event)
            if isinstance(event, last):
                final = event
    if final is None:
        raise RuntimeError(f"the events ended without a {last.__name__}")
    return final


class BatchProgress:
    """Prompts done, tokens/s and ETA: a Rich bar on a terminal, a log line every few seconds otherwise."""

    LOG_EVERY = 5.0  # seconds between plain progress lines

    def __init__(self, console: Console, total: int):
        self.console = console
        self.total = total
        self.done = 0
        self.tokens = 0
        self.start = time.perf_counter()
        self.last_log = self.start
        self.progress = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("prompts"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("prompts", total=total, rate="– tok/s")

    def __enter__(self) -> BatchProgress:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.__exit__(kind, exc, tb)
        elif kind is None and self.total:
            self._log()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.tokens / elapsed if elapsed > 0 else 0.0

    def advance(self, tokens: int) -> None:
        self.done += 1
        self.tokens += tokens
        if self.progress is not None:
            self.progress.update(self.task, advance=1, rate=f"{self.rate():.1f} tok/s")
        elif time.perf_counter() - self.last_log >= self.LOG_EVERY:
            self._log()

    def _log(self) -> None:
        self.last_log = now = time.perf_counter()
        per_prompt = (now - self.start) / self.done if self.done else 0.0
        eta = per_prompt * (self.total - self.done)
        say(self.console, f"{self.done}/{self.total} prompts · {self.rate():.1f} tok/s · ETA {eta:.0f} s")


def print_answer(result: GenerationResult, err: Console, think: bool, as_json: bool, stats: bool) -> None:
    """A one-shot answer: the answer (or one JSON object) on stdout; thoughts, stats, warnings on err."""
    thinking = result.thinking[0] if result.thinking else ""
    if as_json:
        payload: dict[str, Any] = {"text": result.answer, "tokens": result.new_tokens[0]}
        if think:
            payload["thinking"] = thinking
        payload |= {"finished": result.finished[0], "stats": result.stats.to_dict()}
        print(json.dumps(payload, ensure_ascii=False), flush=True)
    else:
        if thinking:
            say(err, f"thinking: {thinking}", style="dim italic")
        print(result.answer, flush=True)
    if stats:
        print_stats(err, result.stats)
    if result.finish_reasons[0] == "length":
        say(err, budget_warning(result.config.max_new_tokens, "raise it with --max-tokens"))


def budget_warning(max_new_tokens: int, how_to_raise: str) -> Text:
    """Partial output must never look complete: said whenever a row stopped at the budget, not EOS."""
    return Text(
        f"⚠ stopped at the token budget ({max_new_tokens} new tokens) before the model finished: "
        f"the answer may be cut short ({how_to_raise})",
        style="yellow",
    )
