"""How many attempts a Sudoku solve should get: solve rate within k attempts, for retries on
transformed copies of the puzzle (what `dgemma sudoku` does) and for retries with a new sampler seed
on the puzzle as given (the cheaper idea it beat).

Runs on the training script's held-out seed, never the benchmark's, so the default number of attempts
is not tuned on the puzzles `sudoku_eval.py` reports.

    python benchmarks/sudoku_attempts.py [--count 100] [--attempts 8] [--difficulties medium hard]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dgemma_mlx.loading import load
from dgemma_mlx.sudoku import ASSETS
from dgemma_mlx.sudoku.puzzles import generate_batch
from dgemma_mlx.sudoku.solver_model import SudokuResult, solve_grids
from dgemma_mlx.sudoku.train import EVAL_SEED


def reseeded(model, puzzles, seed: int, attempts: int) -> list[SudokuResult]:
    """Retries that change only the sampler seed (seed + k, as a transformed retry's seed)."""
    results = [None] * len(puzzles)
    passes = [0] * len(puzzles)
    for k in range(attempts):
        todo = [i for i, r in enumerate(results) if r is None]
        if not todo:
            break
        for i, r in zip(todo, solve_grids(model, [puzzles[i] for i in todo], seed=seed + k), strict=True):
            passes[i] += r.passes
            if r.valid or k + 1 == attempts:
                results[i] = SudokuResult(r.puzzle, r.solution, r.valid, passes[i], k + 1)
    return results


def within(results: list[SudokuResult], k: int) -> float:
    return sum(r.valid and r.attempts <= k for r in results) / len(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ASSETS)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--attempts", type=int, default=8)
    p.add_argument("--difficulties", nargs="+", default=["medium"])
    args = p.parse_args()

    model, _ = load(args.model)
    print(f"model {args.model}; {args.count} puzzles per difficulty, seed {args.seed}", flush=True)
    for difficulty in args.difficulties:
        puzzles = [pz.puzzle for pz in generate_batch(args.seed, difficulty, args.count)]
        runs = {
            "transformed copy": solve_grids(model, puzzles, seed=args.seed, attempts=args.attempts),
            "new seed only": reseeded(model, puzzles, args.seed, args.attempts),
        }
        for name, results in runs.items():
            rates = " ".join(f"{within(results, k):4.0%}" for k in range(1, args.attempts + 1))
            passes = sum(r.passes for r in results) / len(results)
            print(f"{difficulty:<7} {name:<17} solved within 1..{args.attempts}: {rates}  "
                  f"({passes:.1f} passes per puzzle)", flush=True)


if __name__ == "__main__":
    main()
