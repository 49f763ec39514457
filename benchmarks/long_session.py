"""Many consecutive generations in one process must stay flat in time and memory.

Elsewhere, a DiffusionGemma port on MLX went from 1 s to 124 s to first token after ~18 generations
in one process. This runs 50 generations back to back in one process, the way `dgemma chat` does
(one ChatSession, a fresh conversation every `--reset-every` turns so that turn k of each
conversation sees the same context length) and the way `dgemma batch` does (independent
`generate` calls), and prints time, time to first pass and peak memory of the first and last five.

    python benchmarks/long_session.py [--model DIR] [--generations 50] [--mode chat|batch|both]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np

from dgemma_mlx import generate, load
from dgemma_mlx.events import FinishEvent
from dgemma_mlx.session import ChatSession

TESTS = Path(__file__).resolve().parent.parent / "tests"


def default_model() -> Path:
    sys.path.insert(0, str(TESTS))
    from tiny_models import word_chat_model

    # fixed work per generation: no EOS, no early stopping
    return word_chat_model(
        tempfile.mkdtemp(prefix="dgemma-long-bench-"),
        eos_token_id=[],
        stability_threshold=None,
        max_new_tokens=32,
        max_denoising_steps=16,
    )


def measure(step: Callable[[int], Iterator[object]], n: int) -> list[tuple[float, float, float, float]]:
    """Per generation: total seconds, seconds to the first pass, peak MB, MB held afterwards."""
    rows = []
    for i in range(n):
        mx.reset_peak_memory()
        start = time.perf_counter()
        first = None
        for event in step(i):
            if first is None:
                first = time.perf_counter() - start
            if isinstance(event, FinishEvent):
                break
        total = time.perf_counter() - start
        held = (mx.get_active_memory() + mx.get_cache_memory()) / 1e6
        rows.append((total, first or total, mx.get_peak_memory() / 1e6, held))
    return rows


def report(name: str, rows: list[tuple[float, float, float, float]]) -> None:
    print(f"{name}: {len(rows)} generations in one process")
    for label, chunk in (("first 5", rows[:5]), ("last 5", rows[-5:])):
        total = statistics.median(r[0] for r in chunk)
        first = statistics.median(r[1] for r in chunk)
        peak = max(r[2] for r in chunk)
        held = statistics.mean(r[3] for r in chunk)
        print(
            f"  {label:8s} {total * 1e3:8.1f} ms/generation  {first * 1e3:7.1f} ms to first pass (medians)  "
            f"peak {peak:8.2f} MB  held after {held:8.2f} MB"
        )
    ratio = statistics.median(r[0] for r in rows[-5:]) / statistics.median(r[0] for r in rows[:5])
    # a slope over all generations is robust to a busy machine's one-off spikes, unlike 5 vs 5
    slope = float(np.polyfit(np.arange(len(rows)), [r[0] * 1e3 for r in rows], 1)[0])
    typical = statistics.median(r[0] * 1e3 for r in rows)
    print(f"  last/first time ratio {ratio:.2f}; trend {slope:+.2f} ms/generation (median {typical:.1f} ms)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model directory (default: a tiny random model)")
    p.add_argument("--generations", type=int, default=50)
    p.add_argument("--reset-every", type=int, default=5, help="chat mode: new conversation every N turns")
    p.add_argument("--mode", choices=("chat", "batch", "both"), default="both")
    args = p.parse_args()
    model, tokenizer = load(args.model or default_model())
    generate(model, tokenizer, "warm up", seed=0)

    if args.mode in ("chat", "both"):
        session = ChatSession(model, tokenizer, seed=0)

        def chat_turn(i: int) -> Iterator[object]:
            if i and i % args.reset_every == 0:
                session.reset()
            return session.stream(f"question number {i}: tell me a story about the sky")

        report("chat (one ChatSession)", measure(chat_turn, args.generations))

    if args.mode in ("batch", "both"):
        from dgemma_mlx import stream_generate

        def one_prompt(i: int) -> Iterator[object]:
            return stream_generate(model, tokenizer, f"prompt {i}: why is the sky blue", seed=i)

        report("batch (independent generations)", measure(one_prompt, args.generations))


if __name__ == "__main__":
    main()
