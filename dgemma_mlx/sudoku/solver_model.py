"""Solving Sudoku with the bundled DiffusionGemma through the unmodified generation API.

The givens are pinned as fixed canvas positions, so the sampler refines only the blank cells; the
puzzle itself is the prompt the encoder caches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..api import stream_generate
from ..events import CanvasEvent, FinishEvent, PassEvent
from ..loading import load
from ..model import Model
from . import ASSETS
from . import tokens as T
from .puzzles import is_valid_solution


def load_bundled():
    """(model, tokenizer) of the checkpoint shipped inside the package."""
    return load(ASSETS)


@dataclass(frozen=True)
class SudokuResult:
    puzzle: tuple[int, ...]
    solution: tuple[int, ...]  # 0 where the model left a non-digit token
    valid: bool
    passes: int


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


def result_of(puzzle, event: FinishEvent) -> SudokuResult:
    canvas = event.result.sequences[0, -T.CANVAS_LENGTH :].tolist()
    solution = tuple(T.decode_canvas(canvas))
    return SudokuResult(
        puzzle=tuple(puzzle),
        solution=solution,
        valid=is_valid_solution(solution, puzzle),
        passes=event.result.stats.passes[0],
    )


def solve_grid(model: Model, puzzle, seed: int | None = None, **overrides: Any) -> SudokuResult:
    for event in solve_stream(model, puzzle, seed=seed, **overrides):
        if isinstance(event, FinishEvent):
            return result_of(puzzle, event)
    raise AssertionError("generation ended without a result")
