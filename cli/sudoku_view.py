"""The Sudoku board view: a 9x9 grid whose cells change pass by pass as the canvas denoises.

Consumes only engine and solver events, through the same `handle(event)` as the text views in
`view.py`. Givens are pinned and drawn in `style.PINNED`; every other cell shows the current draft
digit coloured by the one colour rule of every live view (`style.position_style`: its state on this
pass, brightness by the model's confidence). A retry (a transformed copy of the puzzle) is announced above the
board, which keeps the puzzle's own layout: the solver maps every pass back. Redraws are throttled;
off a TTY nothing is animated and no ANSI is written.
"""

from __future__ import annotations

import time
from types import TracebackType

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dgemma_mlx.events import PassEvent
from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.solver_model import AttemptEvent, SudokuResult

from .style import PINNED, legend, position_style

REDRAW_INTERVAL = 1 / 15  # seconds; the view must cost a sliver of a pass
SudokuEvent = AttemptEvent | PassEvent | SudokuResult


def render_board(puzzle, digits, accepted=None, changed=None, confidence=None) -> Table:
    """A 9x9 grid with 3x3 box rules; `digits` 0 shows as a dot."""
    table = Table.grid(padding=(0, 0))
    for _ in range(11):
        table.add_column(justify="center")
    for r in range(9):
        if r in (3, 6):
            table.add_row(*[Text("──" if c not in (3, 7) else "┼─") for c in range(11)])
        cells = []
        for c in range(9):
            if c in (3, 6):
                cells.append(Text("│ "))
            i = r * 9 + c
            d = int(digits[i])
            style = PINNED if puzzle[i] else position_style(
                bool(accepted[i]) if accepted is not None else False,
                bool(changed[i]) if changed is not None else False,
                float(confidence[i]) if confidence is not None else 1.0,
            )
            cells.append(Text(f"{d if d else '·'} ", style=style))
        table.add_row(*cells)
    return table


def plain_board(digits) -> str:
    rows = []
    for r in range(9):
        row = "".join(str(int(d)) if d else "." for d in digits[r * 9 : r * 9 + 9])
        rows.append(" ".join([row[0:3], row[3:6], row[6:9]]))
    return "\n".join(rows)


class SudokuLiveView:
    """A `View` of one solve: fed every event, draws the board live on a terminal."""

    def __init__(self, console: Console, puzzle, title: str):
        self.console = console
        self.puzzle = list(puzzle)
        self.blanks = np.array([v == 0 for v in self.puzzle])  # the model's cells: givens are not its work
        self.title = title
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.last_draw = 0.0
        self.last_event: PassEvent | None = None
        self.attempt: AttemptEvent | None = None

    def __enter__(self) -> SudokuLiveView:
        self.live.__enter__()
        self._draw(self._frame(None))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.last_event is not None:
            self._draw(self._frame(self.last_event))
        self.live.__exit__(kind, exc, tb)

    def handle(self, event: SudokuEvent) -> None:
        if isinstance(event, AttemptEvent):
            self._start_attempt(event)
        elif isinstance(event, PassEvent):
            self._update(event)
        # a SudokuResult changes nothing on the board: the command prints the verdict under it

    def _start_attempt(self, event: AttemptEvent) -> None:
        """A retry means the attempt before it ended on an invalid grid: say so, then start afresh."""
        if event.attempt > 1:
            if self.last_event is not None:
                self._draw(self._frame(self.last_event))  # the failed grid as it ended
            passes = event.passes_so_far - (self.attempt.passes_so_far if self.attempt else 0)
            self.live.console.print(
                Text.assemble(
                    (f"attempt {event.attempt - 1}: no valid solution ({passes} passes); ", "red"),
                    "retrying on a transformed copy of the puzzle",
                )
            )
        self.attempt = event
        self.last_event = None

    def _update(self, event: PassEvent) -> None:
        self.last_event = event
        now = time.perf_counter()
        if now - self.last_draw >= REDRAW_INTERVAL:
            self._draw(self._frame(event))
            self.last_draw = now

    def _draw(self, renderable) -> None:
        self.live.update(renderable, refresh=True)

    def _frame(self, event: PassEvent | None):
        if event is None:
            header = Text(f"{self.title}  starting…", style="bold")
            return Group(header, render_board(self.puzzle, self.puzzle))
        digits = T.decode_canvas(event.draft[0])
        attempt = self.attempt
        header = Text.assemble(
            (self.title, "bold"),
            f"  attempt {attempt.attempt}/{attempt.attempts}" if attempt and attempt.attempts > 1 else "",
            f"  pass {event.pass_index}/{event.max_steps}",
            f"  T={event.temperature:.2f}",
            f"  mean entropy {float(np.mean(event.entropy[0])):.3f}",
            f"  accepted {int(event.accepted[0][self.blanks].sum())}/{int(self.blanks.sum())}",
        )
        board = render_board(self.puzzle, digits, event.accepted[0], event.changed[0], event.confidence[0])
        return Group(header, board, legend(pinned="given"))
