"""Solve rate and passes of a Sudoku checkpoint under several sampler settings, to pick its
generation_config.json.

A diffusion model's sampler settings trade passes for accuracy (a lower entropy bound accepts fewer
cells per pass; more passes give the canvas more chances to settle). The sweep runs on the held-out
evaluation seed (`evaluation.EVAL_SEED`), never on the benchmark's seed, so the chosen settings are not
tuned on the puzzles `sudoku_eval.py` reports.

    python benchmarks/sudoku_sampler_sweep.py --model DIR --count 100 \
        --set entropy_bound=0.1 --set entropy_bound=0.05,max_denoising_steps=96
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.generation_config import GenerationConfig, parse_overrides
from dgemma_mlx.loading import load
from dgemma_mlx.sudoku import ASSETS
from dgemma_mlx.sudoku.evaluation import EVAL_SEED, evaluate, puzzles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ASSETS)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--difficulties", nargs="+", default=["easy", "medium"])
    p.add_argument("--set", dest="settings", action="append", default=[], help="key=value[,key=value]")
    args = p.parse_args()

    base = GenerationConfig.from_model_dir(args.model)
    configs = []
    for text in args.settings or [""]:  # all checked before any (minutes-long) run starts
        try:
            configs.append((text, base.replace_explicit(**parse_overrides(text))))
        except DGemmaError as e:
            p.error(f"--set {text}: {e}")
    model, _ = load(args.model)
    for difficulty in args.difficulties:
        puzzles(args.seed, difficulty, args.count)  # generated once, before the first setting's clock
    print(f"model {args.model}; {args.count} puzzles per difficulty, seed {args.seed}", flush=True)
    for text, config in configs:
        figures = evaluate(model, args.seed, args.count, args.difficulties, config=config)
        cells = [f"{d} {f.rate:6.1%} {f.passes:5.1f} passes" for d, f in figures.items()]
        seconds = sum(f.seconds_per_puzzle * f.count for f in figures.values())
        print(f"{text or 'checkpoint defaults':<50} " + "  ".join(cells) + f"  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
