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


def plan(puzzle: str | None, difficulty: str, count: int, seed: int | None) -> list[Job]:
    """The puzzles of a run: `puzzle` parsed (81 cells, 0 or . for blanks), or `count` generated ones.

    One `random.Random(seed)` draws the generated puzzles, then each puzzle's sampler seed, so a seeded
    run repeats exactly; without a seed every solve samples afresh.
    """
    import random

    from .puzzles import generate_puzzle, parse_puzzle

    grids = [parse_puzzle(puzzle)] if puzzle is not None else None
    rng = random.Random(seed)
    if grids is None:
        grids = [list(generate_puzzle(rng, difficulty).puzzle) for _ in range(count)]
    return [Job(grid, rng.randrange(2**31) if seed is not None else None) for grid in grids]
