"""Solving Sudoku with the bundled DiffusionGemma through the unmodified generation API.

The givens are pinned as fixed canvas positions, so the sampler refines only the blank cells; the
puzzle itself is the prompt the encoder caches.

A solve may take several attempts. The first sees the puzzle as given; when its grid is not a valid
solution (checked exactly, without knowing the answer), the next one solves a transformed copy of the
puzzle (`symmetry.py`: digits relabelled, rows, columns, bands and stacks moved, maybe transposed)
and maps its answer back. Why a transformed copy and not just a new sampler seed: the model's mistakes
follow what it sees, so a new seed on the same puzzle tends to repeat them, a new view much less
(`Retry.RESEED` keeps the cheaper idea for the comparison; training/sudoku/TRAINING.md, "Retries").
Every attempt is an ordinary run of the sampler, and the passes of all of them count.

`attempt_stream` is the one attempt loop: a batch of puzzles, each attempt one batched generation
of the puzzles still unsolved (rows stop independently: adaptive stopping is per row). `solve_stream`
(one puzzle, its events) and `solve_grids` (a batch, its results) only consume it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ..api import stream_generate
from ..events import FinishEvent, PassEvent
from ..model import Model
from . import tokens as T
from .puzzles import format_puzzle, is_valid_solution
from .symmetry import Symmetry


@dataclass(frozen=True)
class SudokuResult:
    puzzle: tuple[int, ...]
    solution: tuple[int, ...]  # 0 where the model left a non-digit token
    valid: bool
    passes: int  # over all attempts
    attempts: int = 1  # attempts run: the one that solved it, or all of them
    index: int = field(default=0, compare=False)  # the puzzle's place in the batch solved

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `dgemma sudoku --json` prints: grids as 81-character strings."""
        return {
            "puzzle": format_puzzle(self.puzzle),
            "solution": format_puzzle(self.solution),
            "valid": self.valid,
            "passes": self.passes,
            "attempts": self.attempts,
        }


@dataclass(frozen=True)
class AttemptEvent:
    """An attempt starts for one puzzle; from the second on, the model sees a transformed copy of it
    (the pass events stay in the puzzle's own cells and digits). Each attempt announces its puzzles in
    the order of the batch rows of the pass events that follow."""

    attempt: int  # 1-based
    attempts: int  # the most that will run
    passes_so_far: int  # passes of this puzzle's attempts before this one
    puzzle: int = 0  # the puzzle's place in the batch solved


class Retry(str, Enum):
    """What a retry changes: the view of the puzzle (the default) or only the sampler seed."""

    TRANSFORM = "transform"
    RESEED = "reseed"


def _attempt_seed(seed: int | None, attempt: int) -> int | None:
    return None if seed is None else seed + attempt


def _symmetry(rng: np.random.Generator, attempt: int, retry: Retry) -> Symmetry:
    if attempt == 0 or retry == Retry.RESEED:
        return Symmetry.identity()
    return Symmetry.random(rng)


def _rows(symmetries: Sequence[Symmetry], values: np.ndarray, inverse) -> np.ndarray:
    return np.stack([inverse(s, row) for s, row in zip(symmetries, values, strict=True)])


def _in_puzzle_frames(event: PassEvent, symmetries: Sequence[Symmetry]) -> PassEvent:
    """A pass over transformed copies, each batch row seen in its own puzzle's cells and digits."""
    if all(s == Symmetry.identity() for s in symmetries):
        return event
    moved = {k: _rows(symmetries, getattr(event, k), Symmetry.invert_tokens) for k in ("draft", "canvas")}
    for k in ("accepted", "changed", "entropy", "confidence"):
        moved[k] = _rows(symmetries, getattr(event, k), Symmetry.unpermute)
    return dataclasses.replace(event, **moved)


def _answer(symmetry: Symmetry, row: list[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in symmetry.invert(T.decode_canvas(row[-T.CANVAS_LENGTH :])))


def attempt_stream(
    model: Model,
    puzzles: Sequence[Sequence[int]],
    seed: int | None = None,
    attempts: int = 1,
    retry: Retry = Retry.TRANSFORM,
    **overrides: Any,
) -> Iterator[AttemptEvent | PassEvent | SudokuResult]:
    """Events of solving a batch of puzzles, each given up to `attempts` attempts.

    Per attempt: an `AttemptEvent` per puzzle still unsolved (in batch-row order), the `PassEvent`s of
    one batched generation (rows in each puzzle's own frame), then a `SudokuResult` for each puzzle
    that is done (valid, or out of attempts). Reproducible by seed: attempt k samples with seed + k, and
    its transformed copies are drawn from `np.random.default_rng(seed)`, one per row in order.
    """
    rng = np.random.default_rng(seed)
    passes = [0] * len(puzzles)
    todo = list(range(len(puzzles)))
    for attempt in range(attempts):
        symmetries = [_symmetry(rng, attempt, retry) for _ in todo]
        grids = [s.apply(puzzles[i]).tolist() for s, i in zip(symmetries, todo, strict=True)]
        for i in todo:
            yield AttemptEvent(attempt + 1, attempts, passes[i], i)
        finish = None
        for event in stream_generate(
            model,
            None,
            [T.encode_prompt(g) for g in grids],
            seed=_attempt_seed(seed, attempt),
            fixed_positions=[T.pinned_positions(g) for g in grids],
            max_new_tokens=T.CANVAS_LENGTH,
            **overrides,
        ):
            if isinstance(event, PassEvent):
                yield _in_puzzle_frames(event, symmetries)
            elif isinstance(event, FinishEvent):
                finish = event.result
        assert finish is not None, "generation ended without a result"
        rows = zip(todo, symmetries, finish.sequences.tolist(), finish.stats.passes, strict=True)
        unsolved = []
        for i, symmetry, row, row_passes in rows:
            solution = _answer(symmetry, row)
            passes[i] += row_passes
            valid = is_valid_solution(solution, puzzles[i])
            if valid or attempt + 1 == attempts:
                yield SudokuResult(tuple(puzzles[i]), solution, valid, passes[i], attempt + 1, i)
            else:
                unsolved.append(i)
        todo = unsolved
        if not todo:
            return


def solve_stream(
    model: Model, puzzle: Sequence[int], seed: int | None = None, attempts: int = 1, **overrides: Any
) -> Iterator[AttemptEvent | PassEvent | SudokuResult]:
    """Events of one solve (givens pinned, one 81-cell canvas per attempt), then its result."""
    return attempt_stream(model, [puzzle], seed=seed, attempts=attempts, **overrides)


def solve_grid(
    model: Model, puzzle: Sequence[int], seed: int | None = None, attempts: int = 1, **overrides: Any
) -> SudokuResult:
    return solve_grids(model, [puzzle], seed=seed, attempts=attempts, **overrides)[0]


def solve_grids(
    model: Model, puzzles: Sequence[Sequence[int]], seed: int | None = None, attempts: int = 1, **options: Any
) -> list[SudokuResult]:
    """Many puzzles as one batch per attempt: each gets the same kind of solve as `solve_grid`, in a
    fraction of the wall time. Each further attempt batches only the puzzles still unsolved. `options`:
    `retry` and generation overrides, as `attempt_stream` takes them."""
    results: list[SudokuResult | None] = [None] * len(puzzles)
    for event in attempt_stream(model, puzzles, seed=seed, attempts=attempts, **options):
        if isinstance(event, SudokuResult):
            results[event.index] = event
    assert all(r is not None for r in results), "a solve ended without a result"
    return results  # type: ignore[return-value]
