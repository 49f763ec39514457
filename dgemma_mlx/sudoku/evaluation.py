"""The one way Sudoku solving is measured: solve rate, passes and attempts per difficulty on fresh puzzles.

Training's periodic evaluation and every Sudoku benchmark call `evaluate`, so their figures are
computed alike and compare. Puzzles come from `generate_batch(seed, difficulty, count)`; the solver
runs them in batches (`batch` puzzles at a time; puzzle i samples from its own stream, seed + i),
which changes only the wall time, not how each puzzle is solved.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..generation_config import GenerationConfig
from ..model import Model
from .puzzles import generate_batch
from .solver_model import Retry, SudokuResult, solve_grids

# Held out: never a training pool seed (1001-1003). Training's evaluation and the benchmarks that choose
# settings (sampler, attempts) use it; `benchmarks/sudoku_eval.py` reports on yet another seed, so
# nothing is tuned on the puzzles it reports.
EVAL_SEED = 777


@dataclass(frozen=True)
class Figures:
    """One difficulty's results; `passes` and `attempts` are means per puzzle over all attempts."""

    count: int
    solved: int
    passes: float
    attempts: float
    solved_within: tuple[float, ...]  # fraction solved within k attempts, k = 1, 2, ...
    seconds_per_puzzle: float

    @property
    def rate(self) -> float:
        return self.solved / self.count

    @property
    def first_attempt(self) -> float:
        """The model and sampler as they are: the fraction solved without a retry."""
        return self.solved_within[0]

    @classmethod
    def of(cls, results: Sequence[SudokuResult], attempts: int, seconds: float) -> Figures:
        n = len(results)
        within = tuple(sum(r.valid and r.attempts <= k for r in results) / n for k in range(1, attempts + 1))
        return cls(
            count=n,
            solved=sum(r.valid for r in results),
            passes=sum(r.passes for r in results) / n,
            attempts=sum(r.attempts for r in results) / n,
            solved_within=within,
            seconds_per_puzzle=seconds / n,
        )


@functools.lru_cache(maxsize=16)
def puzzles(seed: int, difficulty: str, count: int) -> tuple[tuple[int, ...], ...]:
    """The evaluation puzzles (cached: a sweep solves the same ones under many settings)."""
    return tuple(tuple(p.puzzle) for p in generate_batch(seed, difficulty, count))


def evaluate(
    model: Model,
    seed: int,
    count: int,
    difficulties: Sequence[str],
    attempts: int = 1,
    batch: int | None = None,
    config: GenerationConfig | None = None,
    retry: Retry = Retry.TRANSFORM,
    **overrides: Any,
) -> dict[str, Figures]:
    """Solve `count` fresh puzzles per difficulty (seed `seed`) with up to `attempts` attempts each.

    `batch=None` solves a difficulty's puzzles as one batch; `config` and `overrides` are the sampler
    settings (default: the checkpoint's generation_config.json).
    """
    out = {}
    size = batch or count
    for difficulty in difficulties:
        grids = puzzles(seed, difficulty, count)
        start_time = time.perf_counter()
        results: list[SudokuResult] = []
        for start in range(0, count, size):
            chunk = grids[start : start + size]
            results += solve_grids(
                model, chunk, seed=seed + start, attempts=attempts, retry=retry, config=config, **overrides
            )
        out[difficulty] = Figures.of(results, attempts, time.perf_counter() - start_time)
    return out
