"""Many consecutive generations in one process must stay flat in time and memory.

Runs 50 chat turns on one `ChatSession` (the `dgemma chat` path) and prints time and peak memory of
the first and last five. Elsewhere a DiffusionGemma port slowed from 1 s to 124 s to first token
after ~18 generations in one process; here the last five should match the first five.

    python benchmarks/long_session.py [--model DIR] [--turns 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx

from dgemma_mlx import load
from dgemma_mlx.events import FinishEvent
from dgemma_mlx.session import ChatSession


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir (default: a tiny random real-vocabulary model)")
    p.add_argument("--turns", type=int, default=50)
    p.add_argument("--reset-every", type=int, default=10, help="start a new conversation every N turns")
    args = p.parse_args()
    if args.model is None:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_models import tiny_chat_model

        args.model = tiny_chat_model(max_denoising_steps=16)
    model, tokenizer = load(args.model)
    session = ChatSession(model, tokenizer, seed=0)
    rows = []
    for turn in range(args.turns):
        if turn and turn % args.reset_every == 0:
            session.reset()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        first_pass = None
        for event in session.stream(f"Question number {turn}: tell me something."):
            if first_pass is None:
                first_pass = time.perf_counter() - t0
            if isinstance(event, FinishEvent):
                break
        rows.append(
            (time.perf_counter() - t0, first_pass, mx.get_peak_memory() / 1e6, mx.get_active_memory() / 1e6)
        )
    for name, chunk in (("first 5", rows[:5]), ("last 5", rows[-5:])):
        total = statistics.mean(r[0] for r in chunk)
        first = statistics.mean(r[1] for r in chunk)
        peak = max(r[2] for r in chunk)
        active = statistics.mean(r[3] for r in chunk)
        print(
            f"{name:8s} {total * 1e3:8.1f} ms/turn  {first * 1e3:7.1f} ms to first pass  "
            f"peak {peak:7.1f} MB  active after {active:7.1f} MB"
        )


if __name__ == "__main__":
    main()
