"""What the live view costs: the same generation with `--view none` and `--view live` on a pseudo-terminal.

Builds (or takes with --model) a model with the real 262,144-token vocabulary so decoding pieces for
the canvas is as expensive as in real use, runs the identical seeded generation twice, and prints
both times and their ratio (target: live within 5% of none).

    python benchmarks/view_overhead.py [--model DIR] [--tokens 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from rich.console import Console

from dgemma_mlx import load, stream_generate
from dgemma_mlx.cli.view import consume, make_view


def pty_console() -> Console:
    """A Console writing into a real pseudo-terminal, drained by a thread like a terminal would."""
    master, slave = os.openpty()

    def drain() -> None:
        while True:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break

    threading.Thread(target=drain, daemon=True).start()
    return Console(file=os.fdopen(slave, "w"), force_terminal=True, width=120, height=40)


def run(model, tokenizer, view: str, console: Console, tokens: int) -> float:
    t0 = time.perf_counter()
    events = stream_generate(
        model, tokenizer, "Write a story.", seed=0, max_new_tokens=tokens, stability_threshold=None
    )
    consume(events, make_view(view, console, tokenizer))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model dir (default: a tiny random real-vocabulary model)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.model is None:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_models import tiny_chat_model

        args.model = tiny_chat_model(max_denoising_steps=16)
    model, tokenizer = load(args.model)
    console = pty_console()
    run(model, tokenizer, "none", console, args.tokens)  # warm-up
    none = min(run(model, tokenizer, "none", console, args.tokens) for _ in range(args.repeats))
    live = min(run(model, tokenizer, "live", console, args.tokens) for _ in range(args.repeats))
    print(f"--view none  {none:7.3f} s")
    print(f"--view live  {live:7.3f} s  (pseudo-terminal)")
    print(f"live / none  {live / none:7.3f}  (overhead {100 * (live / none - 1):+.1f}%, target < 5%)")


if __name__ == "__main__":
    main()
