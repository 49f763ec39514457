"""Solving Sudoku with the bundled DiffusionGemma through the unmodified generation API.

The givens are pinned as fixed canvas positions, so the sampler refines only the blank cells; the
puzzle itself is the prompt the encoder caches.

A solve may take several attempts. The first sees the puzzle as given; when its grid is not a valid
solution (checked exactly, without knowing the answer), the next one solves a transformed copy of the
puzzle (`symmetry.py`: digits relabelled, rows, columns, bands and stacks moved, maybe transposed)
and maps its answer back. Why a transformed copy and not just a new sampler seed: the model's mistakes
follow what it sees, so a new seed on the same puzzle tends to repeat them, a new view much less
(100 medium puzzles of the validation seed, 8 attempts: 41% -> 64% by reseeding, 41% -> 93% by
transforming; `benchmarks/sudoku_attempts.py`, TRAINING.md). Every attempt is an ordinary run of the
sampler, and the passes of all of them count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api import generate, stream_generate
from ..events import FinishEvent, PassEvent
from ..model import Model
from . import tokens as T
from .puzzles import is_valid_solution
from .symmetry import Symmetry


@dataclass(frozen=True)
class SudokuResult:
    puzzle: tuple[int, ...]
    solution: tuple[int, ...]  # 0 where the model left a non-digit token
    valid: bool
    passes: int  # over all attempts
    attempts: int = 1  # attempts run: the one that solved it, or all of them


@dataclass(frozen=True)
class AttemptEvent:
    """An attempt starts; from the second on, the model sees a transformed copy of the puzzle (the
    pass events stay in the puzzle's own cells and digits)."""

    attempt: int  # 1-based
    attempts: int  # the most that will run
    passes_so_far: int  # passes of the attempts before this one


def solve_rate_and_passes(results: Sequence[SudokuResult]) -> tuple[float, float]:
    """The two figures every Sudoku evaluation reports: fraction solved and mean passes per puzzle."""
    return sum(r.valid for r in results) / len(results), sum(r.passes for r in results) / len(results)


def _attempt_seed(seed: int | None, attempt: int) -> int | None:
    return None if seed is None else seed + attempt


def _symmetry(rng: np.random.Generator, attempt: int) -> Symmetry:
    return Symmetry.identity() if attempt == 0 else Symmetry.random(rng)


def _in_puzzle_frame(event: PassEvent, symmetry: Symmetry) -> PassEvent:
    """A pass over a transformed copy, seen in the original puzzle's cells and digits."""
    if symmetry == Symmetry.identity():
        return event
    return dataclasses.replace(
        event,
        draft=symmetry.invert_tokens(event.draft),
        canvas=symmetry.invert_tokens(event.canvas),
        accepted=symmetry.unpermute(event.accepted),
        changed=symmetry.unpermute(event.changed),
        entropy=symmetry.unpermute(event.entropy),
        confidence=symmetry.unpermute(event.confidence),
    )


def _answer(symmetry: Symmetry, row: list[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in symmetry.invert(T.decode_canvas(row[-T.CANVAS_LENGTH :])))


def solve_stream(
    model: Model, puzzle, seed: int | None = None, attempts: int = 1, **overrides: Any
) -> Iterator[AttemptEvent | PassEvent | SudokuResult]:
    """Events of one solve (givens pinned, one 81-cell canvas per attempt), then its result."""
    rng = np.random.default_rng(seed)
    passes = 0
    for attempt in range(attempts):
        symmetry = _symmetry(rng, attempt)
        yield AttemptEvent(attempt + 1, attempts, passes)
        grid = symmetry.apply(puzzle).tolist()
        solution = None
        for event in stream_generate(
            model,
            None,
            T.encode_prompt(grid),
            seed=_attempt_seed(seed, attempt),
            fixed_positions=T.pinned_positions(grid),
            max_new_tokens=T.CANVAS_LENGTH,
            **overrides,
        ):
            if isinstance(event, PassEvent):
                yield _in_puzzle_frame(event, symmetry)
            elif isinstance(event, FinishEvent):
                solution = _answer(symmetry, event.result.sequences[0].tolist())
                passes += event.result.stats.passes[0]
        assert solution is not None, "generation ended without a result"
        valid = is_valid_solution(solution, puzzle)
        if valid or attempt + 1 == attempts:
            yield SudokuResult(tuple(puzzle), solution, valid, passes, attempt + 1)
            return


def solve_grid(
    model: Model, puzzle, seed: int | None = None, attempts: int = 1, **overrides: Any
) -> SudokuResult:
    for event in solve_stream(model, puzzle, seed=seed, attempts=attempts, **overrides):
        if isinstance(event, SudokuResult):
            return event
    raise AssertionError("a solve ended without a result")


def solve_grids(
    model: Model,
    puzzles: Sequence[Sequence[int]],
    seed: int | None = None,
    attempts: int = 1,
    **overrides: Any,
) -> list[SudokuResult]:
    """Many puzzles as one batch per attempt: rows stop independently (adaptive stopping is per row),
    so a batch gives each puzzle the same kind of solve as `solve_grid`, in a fraction of the wall time.
    Each further attempt batches only the puzzles still unsolved."""
    rng = np.random.default_rng(seed)
    results: list[SudokuResult | None] = [None] * len(puzzles)
    passes = [0] * len(puzzles)
    todo = list(range(len(puzzles)))
    for attempt in range(attempts):
        symmetries = [_symmetry(rng, attempt) for _ in todo]
        grids = [s.apply(puzzles[i]).tolist() for s, i in zip(symmetries, todo, strict=True)]
        out = generate(
            model,
            None,
            [T.encode_prompt(g) for g in grids],
            seed=_attempt_seed(seed, attempt),
            fixed_positions=[T.pinned_positions(g) for g in grids],
            max_new_tokens=T.CANVAS_LENGTH,
            **overrides,
        )
        rows = zip(todo, symmetries, out.sequences.tolist(), out.stats.passes, strict=True)
        for i, symmetry, row, row_passes in rows:
            solution = _answer(symmetry, row)
            passes[i] += row_passes
            valid = is_valid_solution(solution, puzzles[i])
            if valid or attempt + 1 == attempts:
                results[i] = SudokuResult(tuple(puzzles[i]), solution, valid, passes[i], attempt + 1)
        todo = [i for i in todo if results[i] is None]
        if not todo:
            break
    return results  # type: ignore[return-value]  # every entry is set: the last attempt sets the rest
