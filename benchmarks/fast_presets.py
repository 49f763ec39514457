"""What each opt-in fast-decoding knob and preset costs and saves, against the exact sampler.

Three measurements, each paired with the exact sampler on identical inputs:

1. Sudoku (the bundled model, real weights): first-attempt solve rate, mean passes and seconds per
   puzzle on the fresh puzzles of `benchmarks/sudoku_eval.py` (same default seed; puzzle i samples from
   seed + i whatever the setting), per difficulty. `flips` counts puzzles solved by exactly one of the
   two samplers (exact-only / setting-only). The preset rule: a preset ships only if its first-attempt
   rate stays within 2 points of exact (docs/MEASUREMENTS.md, "Fast decoding presets").
2. Agreement on random-weight models (`--agreement`): the fraction of committed tokens equal to the
   exact sampler's under the same seed, float32 `tiny` geometry, a few prompts.
3. Speed at a geometry: use `dgemma bench -g mid --ar --fast PRESET` (interleaved exact and preset rows,
   pass ms and the AR break-even) -- the same tool, so the figures compare with every other bench row.

    python benchmarks/fast_presets.py [--count 200] [--chunk 50] [--settings exact fast max_passes=16 ...]
        [--screen 50] [--difficulties easy medium hard] [--jsonl results.jsonl] [--agreement]

Puzzles run in chunks of `--chunk`, every setting on a chunk before the next chunk, each chunk appended
to `--jsonl` (a rerun resumes, and a run cut short still compares settings on the same puzzles);
`--screen N` runs the settings other than exact and the presets on the first N puzzles only.

A setting is `exact`, a preset name, or knobs as `key=value` pairs joined by commas.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from dgemma_mlx.fast_presets import PRESETS, expand
from dgemma_mlx.generation_config import parse_overrides
from dgemma_mlx.loading import load
from dgemma_mlx.sudoku import ASSETS
from dgemma_mlx.sudoku.evaluation import puzzles
from dgemma_mlx.sudoku.puzzles import DIFFICULTIES
from dgemma_mlx.sudoku.solver_model import Retry, solve_grids

DEFAULT_SETTINGS = [
    "exact",
    "max_passes=16",
    "max_passes=10",
    "accept_confidence=0.9",
    "accept_confidence=0.7",
    "commit_confidence=0.99",
    "commit_confidence=0.9",
    "self_conditioning_top_k=8",
    "self_conditioning_top_k=2",
    *PRESETS,
]


def knobs(setting: str) -> dict[str, Any]:
    if setting == "exact":
        return {}
    if setting in PRESETS:
        return {k: v for k, v in expand({"fast": setting}).items() if v is not None}
    return parse_overrides(setting.replace(",", " "))


def solve(
    model, setting: str, seed: int, count: int, difficulty: str, first: int, size: int
) -> dict[str, Any]:
    """One chunk of puzzles (`first` .. `first + size` of the `count` fresh ones) under one setting: per
    puzzle solved at the first attempt and passes, and the chunk's wall time."""
    chunk = puzzles(seed, difficulty, count)[first : first + size]
    start = time.perf_counter()
    results = solve_grids(
        model, chunk, seed=seed + first, attempts=1, retry=Retry.TRANSFORM, **knobs(setting)
    )
    return {
        "setting": setting,
        "difficulty": difficulty,
        "first": first,
        "solved": [bool(r.valid) for r in results],
        "passes": [int(r.passes) for r in results],
        "seconds": time.perf_counter() - start,
    }


def merged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (setting, difficulty), the chunks that exact also has (paired), joined in puzzle order."""
    exact = {(r["difficulty"], r["first"]) for r in records if r["setting"] == "exact"}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: r["first"]):
        if (r["difficulty"], r["first"]) not in exact:
            continue
        m = out.setdefault((r["setting"], r["difficulty"]), {**r, "solved": [], "passes": [], "seconds": 0.0})
        m["solved"] += r["solved"]
        m["passes"] += r["passes"]
        m["seconds"] += r["seconds"]
        m.setdefault("firsts", set()).add(r["first"])
    return list(out.values())


def agreement(setting: str, prompts: int = 4, seed: int = 0) -> float:
    """Fraction of committed tokens equal to the exact sampler's (same seed), random float32 `tiny`."""
    from dgemma_mlx import generate
    from dgemma_mlx.bench_models import random_model
    from dgemma_mlx.geometry import geometry_config, parse_precision

    model = random_model(
        geometry_config("tiny", None), parse_precision("float32", "float32", "mixed", 64), seed
    )
    same = total = 0
    for p in range(prompts):
        prompt = mx.random.randint(3, model.vocab_size, (24,), key=mx.random.key(100 + p)).tolist()
        config = {"max_new_tokens": 2 * model.canvas_length, "max_denoising_steps": 16}
        exact = generate(model, None, prompt, seed=p, **config).sequences
        fast = generate(model, None, prompt, seed=p, **config, **knobs(setting)).sequences
        same += int((exact == fast).sum()) - len(prompt)
        total += exact.size - len(prompt)
    return same / total


def _paired(exact: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Exact's figures on the chunks `other` has (a setting screened on fewer puzzles)."""
    if exact["firsts"] == other["firsts"]:
        return exact
    size = len(exact["solved"]) // len(exact["firsts"])
    keep = [i for i, f in enumerate(sorted(exact["firsts"])) if f in other["firsts"]]
    take = [j for i in keep for j in range(i * size, (i + 1) * size)]
    seconds = exact["seconds"] * len(keep) / len(exact["firsts"])  # wall time shared out evenly
    return {
        **exact,
        "solved": [exact["solved"][j] for j in take],
        "passes": [exact["passes"][j] for j in take],
        "seconds": seconds,
    }


def table(records: list[dict[str, Any]], agree: dict[str, float]) -> None:
    by = {(r["setting"], r["difficulty"]): r for r in records}
    settings = list(dict.fromkeys(r["setting"] for r in records))
    difficulties = list(dict.fromkeys(r["difficulty"] for r in records))
    head = f"{'setting':<44} {'difficulty':<8} {'n':>4} {'1st':>7} {'d pts':>6} {'flips':>7} {'passes':>7}"
    print(head + f" {'x passes':>8} {'s/puzzle':>9} {'speed':>6} {'agree':>6}")
    for s in settings:
        tot = {"n": 0, "ok": 0, "ok0": 0, "passes": 0, "passes0": 0, "sec": 0.0, "sec0": 0.0, "a": 0, "b": 0}
        covered = [d for d in difficulties if (s, d) in by]
        for d in difficulties + ["all"]:
            if d == "all":
                if len(covered) < 2:
                    continue
                n, ok, ok0 = tot["n"], tot["ok"], tot["ok0"]
                passes, passes0, sec, sec0, a, b = (
                    tot[k] for k in ("passes", "passes0", "sec", "sec0", "a", "b")
                )
            else:
                r, r0 = by.get((s, d)), by.get(("exact", d))
                if r is None or r0 is None:
                    continue
                r0 = _paired(r0, r)
                x, x0 = np.array(r["solved"]), np.array(r0["solved"])
                n, ok, ok0 = len(x), int(x.sum()), int(x0.sum())
                passes, passes0 = sum(r["passes"]), sum(r0["passes"])
                sec, sec0 = r["seconds"], r0["seconds"]
                a, b = int((x0 & ~x).sum()), int((x & ~x0).sum())
                for k, v in zip(
                    ("n", "ok", "ok0", "passes", "passes0", "sec", "sec0", "a", "b"),
                    (n, ok, ok0, passes, passes0, sec, sec0, a, b),
                    strict=True,
                ):
                    tot[k] += v
            delta = 100 * (ok - ok0) / n
            line = f"{s:<44} {d:<8} {n:>4} {ok / n:>7.1%} {delta:>+6.1f} {f'{a}/{b}':>7} {passes / n:>7.2f}"
            ag = f"{agree[s]:>6.3f}" if s in agree else f"{'':>6}"
            print(line + f" {passes0 / passes:>7.2f}x {sec / n:>9.3f} {sec0 / sec:>5.2f}x {ag}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200, help="puzzles per difficulty")
    p.add_argument("--chunk", type=int, default=50, help="puzzles solved together (one record each)")
    p.add_argument("--seed", type=int, default=20261124, help="benchmarks/sudoku_eval.py's default")
    p.add_argument("--difficulties", nargs="+", default=list(DIFFICULTIES))
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    p.add_argument(
        "--screen", type=int, default=None, help="settings after the presets: first N puzzles only"
    )
    p.add_argument("--jsonl", type=Path, help="append each chunk here; chunks already in it are reused")
    p.add_argument("--agreement", action="store_true", help="also the random-weight token agreement")
    p.add_argument("--table-only", action="store_true", help="print the table from --jsonl, solve nothing")
    args = p.parse_args()
    settings = ["exact", *[s for s in args.settings if s != "exact"]]
    for s in settings:
        knobs(s)  # a typo fails before the model loads
    done: list[dict[str, Any]] = []
    if args.jsonl and args.jsonl.exists():
        done = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
        done = [r for r in done if r.get("seed") == args.seed and r.get("count") == args.count]
    have = {(r["setting"], r["difficulty"], r["first"]) for r in done}
    main_settings = {"exact", *PRESETS}
    if not args.table_only:
        model, _ = load(ASSETS)
        print(
            f"Sudoku: {args.count} fresh puzzles per difficulty, seed {args.seed}, first attempt", flush=True
        )
        for s in settings:  # compile and warm up every setting's shapes before anything is timed
            solve(model, s, args.seed, args.count, args.difficulties[0], 0, 2)
        jobs = [  # chunk by chunk, so a run cut short still compares settings on the same puzzles
            (first, d, s)
            for first in range(0, args.count, args.chunk)
            for d in args.difficulties
            for s in settings
            if s in main_settings or args.screen is None or first < args.screen
        ]
        for first, d, s in jobs:
            if (s, d, first) in have:
                continue
            record = solve(model, s, args.seed, args.count, d, first, args.chunk)
            record.update(seed=args.seed, count=args.count, knobs=knobs(s))
            done.append(record)
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            n = len(record["solved"])
            print(
                f"  {d} {first}+{n} {s}: {sum(record['solved'])}/{n} solved, "
                f"{sum(record['passes']) / n:.2f} passes, {record['seconds']:.0f} s",
                flush=True,
            )
    agree = {s: agreement(s) for s in settings} if args.agreement else {}
    wanted = [r for r in done if r["setting"] in settings and r["difficulty"] in args.difficulties]
    print("\n'd pts': first-attempt rate minus exact's on the same puzzles; 'flips': solved by exact only /")
    print("by the setting only; 'x passes' / 'speed': exact's passes / wall time over the setting's (wall")
    print("time is only as steady as the machine); 'agree': committed tokens equal to exact's on a random")
    print("float32 `tiny` model")
    table(merged(wanted), agree)


if __name__ == "__main__":
    main()
