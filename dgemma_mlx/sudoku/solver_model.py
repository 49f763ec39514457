"""Solving Sudoku with the bundled DiffusionGemma through the unmodified generation API.

The givens are pinned as fixed canvas positions, so the sampler refines only the blank cells; the
puzzle itself is the prompt the encoder caches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..api import generate, stream_generate
from ..events import CanvasEvent, FinishEvent, PassEvent
from ..model import Model
from . import tokens as T
from .puzzles import is_valid_solution


@dataclass(frozen=True)
class SudokuResult:
    puzzle: tuple[int, ...]
    solution: tuple[int, ...]  # 0 where the model left a non-digit token
    valid: bool
    passes: int


def solve_rate_and_passes(results: Sequence[SudokuResult]) -> tuple[float, float]:
    """The two figures every Sudoku evaluation reports: fraction solved and mean passes per puzzle."""
    return sum(r.valid for r in results) / len(results), sum(r.passes for r in results) / len(results)


def solve_stream(
    model: Model, puzzle, seed: int | None = None, **overrides: Any
) -> Iterator[PassEvent | CanvasEvent | FinishEvent]:
    """Events of one solve: givens pinned, one 81-cell canvas."""
    yield from stream_generate(
        model,
        None,
        T.encode_prompt(puzzle),
        seed=seed,
        fixed_positions=T.pinned_positions(puzzle),
        max_new_tokens=T.CANVAS_LENGTH,
        **overrides,
    )


def _result(puzzle, row: list[int], passes: int) -> SudokuResult:
    solution = tuple(T.decode_canvas(row[-T.CANVAS_LENGTH :]))
    return SudokuResult(tuple(puzzle), solution, is_valid_solution(solution, puzzle), passes)


def result_of(puzzle, event: FinishEvent) -> SudokuResult:
    return _result(puzzle, event.result.sequences[0].tolist(), event.result.stats.passes[0])


def solve_grid(model: Model, puzzle, seed: int | None = None, **overrides: Any) -> SudokuResult:
    for event in solve_stream(model, puzzle, seed=seed, **overrides):
        if isinstance(event, FinishEvent):
            return result_of(puzzle, event)
    raise AssertionError("generation ended without a result")


def solve_grids(
    model: Model, puzzles: Sequence[Sequence[int]], seed: int | None = None, **overrides: Any
) -> list[SudokuResult]:
    """Many puzzles as one batch: rows stop independently (adaptive stopping is per row), so a batch
    gives each puzzle the same kind of solve as `solve_grid`, in a fraction of the wall time."""
    result = generate(
        model,
        None,
        [T.encode_prompt(p) for p in puzzles],
        seed=seed,
        fixed_positions=[T.pinned_positions(p) for p in puzzles],
        max_new_tokens=T.CANVAS_LENGTH,
        **overrides,
    )
    rows = zip(puzzles, result.sequences.tolist(), result.stats.passes, strict=True)
    return [_result(puzzle, row, passes) for puzzle, row, passes in rows]
