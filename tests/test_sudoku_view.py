"""The Sudoku board view: the attempt it is on, and why a retry started."""

import io
import re

import numpy as np
from rich.console import Console

from dgemma_mlx.cli.sudoku_view import SudokuLiveView
from dgemma_mlx.events import PassEvent
from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.puzzles import generate_batch
from dgemma_mlx.sudoku.solver_model import AttemptEvent

ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def board_pass(pass_index: int, digits) -> PassEvent:
    ids = np.array([T.encode_solution(digits)])
    cells = ids.shape
    return PassEvent(
        canvas_index=0, step=48 - pass_index, pass_index=pass_index, max_steps=48, temperature=1.0,
        draft=ids, canvas=ids, accepted=np.ones(cells, bool), changed=np.zeros(cells, bool),
        entropy=np.zeros(cells, np.float32), confidence=np.ones(cells, np.float32),
        done=np.zeros(1, bool), finished=np.zeros(1, bool), elapsed=0.1,
    )


def test_a_retry_is_announced_and_the_header_counts_attempts():
    p = generate_batch(1, "easy", 1)[0]
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with SudokuLiveView(console, p.puzzle, "Sudoku") as view:
        view.handle(AttemptEvent(1, 8, 0))
        for k in range(1, 6):
            view.handle(board_pass(k, p.solution))
        view.handle(AttemptEvent(2, 8, 5))
        view.handle(board_pass(1, p.solution))
    text = ESCAPES.sub("", out.getvalue())
    assert "attempt 1: no valid solution (5 passes); retrying on a transformed copy" in text
    assert "attempt 2/8  pass 1/48" in text
    assert "attempt 1/8  pass 5/48" in text  # the failed board as it ended (passes 2-5 were throttled)


def test_a_single_attempt_solve_shows_no_attempt_count():
    p = generate_batch(1, "easy", 1)[0]
    out = io.StringIO()
    with SudokuLiveView(Console(file=out, force_terminal=True, width=100), p.puzzle, "Sudoku") as view:
        view.handle(AttemptEvent(1, 1, 0))
        view.handle(board_pass(1, p.solution))
    assert "attempt" not in ESCAPES.sub("", out.getvalue())
