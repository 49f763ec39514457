"""What the live view costs: the same seeded generation with `--view none` and `--view live`.

The live run draws into a real pseudo-terminal (read by another process, as by a terminal emulator),
so every escape sequence is really written. Runs alternate none/live to cancel drift on a busy
machine, and the median of each is reported with their ratio (target: live within 5% of none).

By default it builds the tiny word-level test model with EOS and early stopping switched off, so the
canvas is redrawn over hundreds of very fast passes: the worst case for the view, since drawing
competes with ~1 ms passes rather than a real model's ~100 ms. `--real-vocab` uses the tiny model with
the real 262,144-id Gemma 4 vocabulary (real token pieces); `--model DIR` any checkpoint.

    python benchmarks/view_overhead.py [--model DIR | --real-vocab] [--tokens 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import atexit
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console

from dgemma_mlx import load, stream_generate
from dgemma_mlx.cli.view import LiveView, drive, make_view

TESTS = Path(__file__).resolve().parent.parent / "tests"


def pty_console(width: int = 120, height: int = 40) -> Console:
    """A Console writing into a pseudo-terminal whose other end is read by another process.

    A separate reader, like a terminal emulator, so the reading does not compete for this GIL.
    """
    master, slave = os.openpty()
    reader = subprocess.Popen(["cat"], stdin=master, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(reader.kill)
    os.close(master)
    out = os.fdopen(slave, "w", encoding="utf-8", buffering=1)
    return Console(file=out, force_terminal=True, color_system="truecolor", width=width, height=height)


def default_model(real_vocab: bool) -> Path:
    sys.path.insert(0, str(TESTS))
    slow = {"eos_token_id": [], "stability_threshold": None, "max_denoising_steps": 48}
    from tiny_models import tiny_chat_model, word_chat_model

    if real_vocab:
        return tiny_chat_model(**slow)
    return word_chat_model(tempfile.mkdtemp(prefix="dgemma-view-bench-"), **slow)


def one_run(model, tokenizer, view: str, console: Console, tokens: int) -> tuple[float, LiveView | None]:
    events = stream_generate(model, tokenizer, "Tell me a story.", seed=0, max_new_tokens=tokens)
    shown = make_view(view, console, tokenizer)
    start = time.perf_counter()
    drive(events, shown)
    return time.perf_counter() - start, shown if isinstance(shown, LiveView) else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model directory (default: a tiny random model)")
    p.add_argument("--real-vocab", action="store_true", help="tiny model with the real Gemma 4 vocabulary")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per generation")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    model_dir = args.model or default_model(args.real_vocab)
    model, tokenizer = load(model_dir)
    console = pty_console()
    one_run(model, tokenizer, "none", console, args.tokens)  # warm-up: compile, caches
    times: dict[str, list[float]] = {"none": [], "live": []}
    draws, draw_time = [], []
    for _ in range(args.repeats):
        for view in ("none", "live"):
            elapsed, live = one_run(model, tokenizer, view, console, args.tokens)
            times[view].append(elapsed)
            if live is not None:
                draws.append(live.draws)
                draw_time.append(live.draw_time / elapsed)
    none, live = statistics.median(times["none"]), statistics.median(times["live"])
    print(f"model        {model_dir} (canvas {model.canvas_length}, vocab {model.vocab_size})")
    print(f"generation   {args.tokens} tokens, median of {args.repeats} alternating runs")
    print(f"--view none  {none:7.3f} s")
    print(f"--view live  {live:7.3f} s  (pseudo-terminal, {statistics.median(draws):.0f} frames)")
    print(f"live / none  {live / none:7.3f}  (overhead {100 * (live / none - 1):+.1f}%, target < 5%)")
    print(f"drawing      {100 * statistics.median(draw_time):.1f}% of the live run (timed inside the view)")


if __name__ == "__main__":
    main()
