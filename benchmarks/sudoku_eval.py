"""Solve rate and mean passes of the Sudoku model on fresh puzzles, per difficulty.

Puzzles come from a seed never used in training (training pools use seeds 1001-1003, its held-out
evaluation 777). Puzzles are solved in batches (rows stop independently, so a batch changes only the
wall time). `--recipe` quantizes the model in memory first, to measure how precision changes the
solve rate and the passes a canvas needs (this is how `dgemma convert`'s default recipe was chosen).
`--model` evaluates another checkpoint directory, e.g. one that `training.sudoku.train` is writing.
`--attempts` is the number of solves tried per puzzle, as `dgemma sudoku --attempts` (same default): the
table gives the rate of the first attempt alone (the model and sampler as they are) and of all of
them, and the passes of all attempts.

    python benchmarks/sudoku_eval.py [--count 500] [--seed 20261124] [--attempts 8] [--recipe none|mixed|...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dgemma_mlx.loading import load
from dgemma_mlx.quantization import RECIPES, quantize_model
from dgemma_mlx.sudoku import ASSETS, DEFAULT_ATTEMPTS
from dgemma_mlx.sudoku.evaluation import evaluate
from dgemma_mlx.sudoku.puzzles import DIFFICULTIES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=20261124)
    p.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES))
    p.add_argument("--recipe", default="none", choices=["none", *RECIPES])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--batch", type=int, default=100, help="puzzles solved together")
    p.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS, help="solves tried per puzzle")
    p.add_argument("--model", type=Path, default=ASSETS, help="checkpoint directory (default: bundled)")
    args = p.parse_args()

    model, _ = load(args.model)
    if args.recipe != "none":
        quantize_model(model, bits=args.bits, group_size=64, recipe=args.recipe)
    label = "float32" if args.recipe == "none" else f"{args.bits}-bit {args.recipe}"
    print(
        f"model: {args.model} ({label}); {args.count} puzzles per difficulty, seed {args.seed}, "
        f"up to {args.attempts} attempts"
    )
    widths = {"solved": 9, "rate": 7, "passes": 7, "attempts": 9, "1st attempt": 12, "s/puzzle": 9}
    print(f"{'difficulty':<10} " + " ".join(f"{c:>{w}}" for c, w in widths.items()), flush=True)
    for difficulty in args.difficulties:
        runs = evaluate(model, args.seed, args.count, [difficulty], attempts=args.attempts, batch=args.batch)
        f = runs[difficulty]
        solved = f"{f.solved}/{f.count}"
        line = f"{difficulty:<10} {solved:>9} {f.rate:>6.1%} {f.passes:>7.1f} {f.attempts:>9.2f}"
        line += f" {f.first_attempt:>11.1%}"
        print(f"{line} {f.seconds_per_puzzle:>9.3f}", flush=True)


if __name__ == "__main__":
    main()
