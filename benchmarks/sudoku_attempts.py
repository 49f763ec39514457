"""How many attempts a Sudoku solve should get: solve rate within k attempts, for retries on
transformed copies of the puzzle (what `dgemma sudoku` does) and for retries with a new sampler seed
on the puzzle as given (the cheaper idea it beat).

Runs on the held-out evaluation seed (`evaluation.EVAL_SEED`), never the benchmark's, so the default
number of attempts is not tuned on the puzzles `sudoku_eval.py` reports.

    python benchmarks/sudoku_attempts.py [--count 100] [--attempts 8] [--difficulties medium hard]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dgemma_mlx.loading import load
from dgemma_mlx.sudoku import ASSETS
from dgemma_mlx.sudoku.evaluation import EVAL_SEED, evaluate
from dgemma_mlx.sudoku.solver_model import Retry

RETRIES = {"transformed copy": Retry.TRANSFORM, "new seed only": Retry.RESEED}


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
        for name, retry in RETRIES.items():
            f = evaluate(model, args.seed, args.count, [difficulty], attempts=args.attempts, retry=retry)
            rates = " ".join(f"{rate:4.0%}" for rate in f[difficulty].solved_within)
            print(f"{difficulty:<7} {name:<17} solved within 1..{args.attempts}: {rates}  "
                  f"({f[difficulty].passes:.1f} passes per puzzle)", flush=True)


if __name__ == "__main__":
    main()
