"""Sudoku: puzzles, an exact solver, and the bundled tiny DiffusionGemma that solves them."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

# Here rather than in solver_model so `dgemma --help` can name them without importing the model code.
ASSETS = Path(__file__).parent / "assets"  # the bundled checkpoint
DEFAULT_ATTEMPTS = 8  # solves `dgemma sudoku` and the benchmark try per puzzle (solver_model explains)


class Job(NamedTuple):
    """One puzzle of a `dgemma sudoku` run and the sampler seed it is solved with."""

    puzzle: list[int]
    seed: int | None


def check_solvable(grid: list[int]) -> None:
    """A given puzzle must have exactly one solution, which the exact solver decides in milliseconds.

    No solution: the model could only fail, so say so before loading it. Several solutions: refused too,
    because a Sudoku has one answer, the model was trained on such puzzles, and "solved" would then only
    mean "some completion" (add givens until it is unique).
    """
    from .puzzles import PuzzleError, solve

    found = len(solve(grid, limit=2))
    if found == 0:
        raise PuzzleError("puzzle has no solution: its givens do not clash, but no grid completes them")
    if found > 1:
        raise PuzzleError("puzzle has more than one solution (a Sudoku has exactly one): add givens")


def plan(puzzle: str | None, difficulty: str, count: int, seed: int | None) -> list[Job]:
    """The puzzles of a run: `puzzle` parsed (81 cells, 0 or . for blanks), or `count` generated ones.

    A given puzzle must have exactly one solution (`check_solvable`). One `random.Random(seed)` draws the
    generated puzzles, then each puzzle's sampler seed, so a seeded run repeats exactly; without a seed
    every solve samples afresh.
    """
    import random

    from .puzzles import generate_puzzle, parse_puzzle

    grids = [parse_puzzle(puzzle)] if puzzle is not None else None
    if grids is not None:
        check_solvable(grids[0])
    rng = random.Random(seed)
    if grids is None:
        grids = [list(generate_puzzle(rng, difficulty).puzzle) for _ in range(count)]
    return [Job(grid, rng.randrange(2**31) if seed is not None else None) for grid in grids]
