"""Solve rate and mean passes of the bundled Sudoku model on fresh puzzles, per difficulty.

Puzzles come from a seed never used in training (training pools use seeds 1001-1003, its held-out
evaluation 777). `--recipe` quantizes the model in memory first, to measure how precision changes
the passes a canvas needs (this is how `dgemma convert`'s default recipe was chosen).

    python benchmarks/sudoku_eval.py [--count 500] [--seed 20261124] [--recipe none|uniform|mixed]
"""

from __future__ import annotations

import argparse
import time

from dgemma_mlx.quantization import RECIPES, quantize_model
from dgemma_mlx.sudoku.puzzles import DIFFICULTIES, generate_batch
from dgemma_mlx.sudoku.solver_model import load_bundled, solve_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES))
    p.add_argument("--recipe", default="none", choices=["none", *RECIPES])
    p.add_argument("--bits", type=int, default=4)
    args = p.parse_args()

    model, _ = load_bundled()
    if args.recipe != "none":
        quantize_model(model, bits=args.bits, group_size=64, recipe=args.recipe)
    label = "float32" if args.recipe == "none" else f"{args.bits}-bit {args.recipe}"
    print(f"model: bundled Sudoku DiffusionGemma ({label}); {args.count} puzzles per difficulty")
    print(f"{'difficulty':<10} {'solved':>8} {'rate':>7} {'passes':>7} {'s/puzzle':>9}")
    for difficulty in args.difficulties:
        puzzles = generate_batch(args.seed, difficulty, args.count)
        t0 = time.perf_counter()
        results = [solve_grid(model, pz.puzzle, seed=k) for k, pz in enumerate(puzzles)]
        dt = (time.perf_counter() - t0) / len(puzzles)
        solved = sum(r.valid for r in results)
        passes = sum(r.passes for r in results) / len(results)
        rate = f"{solved}/{len(results)}"
        print(f"{difficulty:<10} {rate:>8} {solved / len(results):>6.1%} {passes:>7.1f} {dt:>9.2f}")


if __name__ == "__main__":
    main()
