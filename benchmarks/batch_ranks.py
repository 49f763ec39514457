"""Data-parallel `dgemma batch`: rows/s in one process and per rank under `mlx.launch -n 2`, and the
share of each rank's time spent in exchanges (rows to rank 0, heartbeats, waiting for the slower rank).

Both ranks run on this machine, so on a 2-core box they split the same cores: read the exchange share
and the per-rank rate, not a speed-up. Two Macs each have their own GPU, so a pair should approach
twice one Mac's rows/s, less that share and the tail where one rank has no batch left.

    python benchmarks/batch_ranks.py [--model DIR] [--prompts 48] [--batch-size 4]

`dgemma bench --rows N` (alone, and under `mlx.launch -n 2`) measures the same rows/s, per rank, and
exchange share on random weights at any geometry, without files (dgemma_mlx/bench_ranks.py); this
script adds a real `dgemma batch` job and checks its rows equal one process's.

Rates are from the progress line (after the model load) and the rows' generated tokens; wall times
include start-up. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent.parent / "tests"


def run(cmd: list[str], out: Path) -> dict[str, float]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if not out.exists() or "written to" not in done.stderr:
        sys.exit(f"run failed:\n{done.stdout}\n{done.stderr}")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    tokens = sum(r["generated_tokens"] for r in rows)
    rate = [float(m) for m in re.findall(r"· ([\d.]+) tok/s", done.stderr)][-1]
    share = re.search(r"([\d.]+)% of the time in exchanges", done.stderr)
    return {
        "rows": len(rows),
        "wall_s": wall,
        "rows_per_s": len(rows) * rate / tokens if tokens else 0.0,
        "exchange_share": float(share.group(1)) / 100 if share else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint directory [default: the tiny word model, built]")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dgemma-ranks-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(TESTS))
        from tiny_models import word_chat_model

        model = str(word_chat_model(work / "model"))
    src = work / "in.txt"
    src.write_text("".join(f"prompt number {i}\n" for i in range(args.prompts)))
    job = ["batch", str(src), "-m", model, "-b", str(args.batch_size), "--seed", "0"]
    one = run([str(BIN / "dgemma"), *job, "-o", str(work / "one.jsonl")], work / "one.jsonl")
    port = str(random.randrange(20000, 60000, 4))
    launch = [str(BIN / "mlx.launch"), "-n", "2", "--backend", "ring", "--starting-port", port, "--"]
    two = run([*launch, str(BIN / "dgemma"), *job, "-o", str(work / "two.jsonl")], work / "two.jsonl")
    same = sorted((work / "one.jsonl").read_text().splitlines()) == sorted(
        (work / "two.jsonl").read_text().splitlines()
    )
    print(f"{args.prompts} prompts, batch size {args.batch_size}, model {model}")
    print(f"1 process : {one['rows_per_s']:.2f} rows/s, wall {one['wall_s']:.1f} s")
    print(
        f"2 ranks   : {two['rows_per_s']:.2f} rows/s together, {two['rows_per_s'] / 2:.2f} rows/s per rank,"
        f" wall {two['wall_s']:.1f} s, rank 0's time in exchanges {two['exchange_share']:.1%}"
    )
    print(f"rows identical to the single process: {same}")


if __name__ == "__main__":
    main()
