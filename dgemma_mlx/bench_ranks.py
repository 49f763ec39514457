"""`dgemma bench` under `mlx.launch` (no `--pipeline`): data-parallel generation's rows/s, overall and per
rank, and the share of each rank's time spent in exchanges.

It measures what `dgemma batch` does under `mlx.launch`, with the same pieces (batch_ranks.py): a fixed
set of seeded random prompts (`--rows` of them, all `--prompt` tokens long) is planned into batches of
`--batch-size` (`batch.plan_batches`), dealt round-robin (`batch_ranks.deal`), each batch generated
through the front door (`batch.generate_batch`, EOS off so every row commits `--canvases` canvases
whatever the weights draft), and finished rows travel to rank 0 in the `Exchange`'s ticks, which are
also the heartbeats. Every rank builds the same model (random weights are seeded alike; a checkpoint's
files are compared in the handshake) and runs one small warm-up batch before the start line, so the
timed run is free of compilation and first-touch costs.

Figures (rank 0 prints them):
- `rows_per_s`: all rows over the wall time from the start line (every rank loaded and warm) to the
  last row at rank 0; `tok_s` the same for generated tokens.
- per rank: its rows, `rows_per_s` over its own busy time (start line to its last batch), and
  `exchange_share`: the part of its time from the start line to the end spent in ticks (sending rows,
  heartbeats, and waiting for a slower peer at a tick or after its own last batch).

Without a launcher (`--rows` in one process) the same run is a group of one: the one-process figure
to compare against. Several ranks on one machine share its cores or GPU: read the per-rank rate and
the exchange share there, not a speed-up.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .batch import Job, Request, generate_batch, plan_batches
from .batch_ranks import Exchange, deal
from .bench import BenchSpec, device_name, generation_config, load_model, prompt_ids
from .distributed import STARTUP_TIMEOUT, Ranks, Watchdog, all_gather_bytes, collective, handshake


def _jobs(model: Any, spec: BenchSpec, rows: int, passes: int | None = None) -> list[Job]:
    """`rows` seeded random prompts as batch jobs, every one with the bench's sampler settings."""
    config = generation_config(spec, model, spec.canvases[0], passes)
    overrides = {
        "max_new_tokens": config.max_new_tokens,
        "max_denoising_steps": config.max_denoising_steps,
        "eos_token_id": (),
    }
    length = spec.prompt_lengths[0]
    return [
        Job(Request(i, f"prompt {i}", i + 1), prompt_ids(model, length, spec.seed + i), overrides)
        for i in range(rows)
    ]


def _run_share(model: Any, spec: BenchSpec, ranks: Ranks, exchange: Exchange, jobs: list[Job], size: int):
    """This rank's batches, seeded by plan position as `dgemma batch` seeds them; its rows go to rank 0.
    Returns (rows, generated tokens, busy seconds from the start line)."""
    rows = tokens = 0
    for first, batch in deal(plan_batches(jobs, size), set(), ranks):
        for row in generate_batch(model, None, batch, spec.seed + first, exchange.on_pass):
            rows, tokens = rows + 1, tokens + row["generated_tokens"]
            exchange.add({"id": row["id"], "rank": ranks.rank, "generated_tokens": row["generated_tokens"]})
    return rows, tokens, time.monotonic() - exchange.started


def run_ranked_bench(
    spec: BenchSpec, ranks: Ranks, watchdog: Watchdog | None, rows: int, batch_size: int, timeout: float
) -> dict[str, Any]:
    """Every rank's part of the measurement; the report (`setup`, `rows`: one row) is complete on rank 0
    only (the others return theirs with only their own figures)."""
    precision = spec.precisions[0]
    settings = {"spec": repr(spec), "rows": rows, "batch_size": batch_size}
    parts: dict[str, bytes | str] = {"settings": json.dumps(settings, sort_keys=True)}
    if spec.model is not None:
        from .distributed import checkpoint_fingerprint
        from .loading import resolve_model_path

        parts = {"model files": checkpoint_fingerprint(resolve_model_path(spec.model)), **parts}
    handshake(ranks, parts, None, watchdog)
    model = load_model(spec, precision)
    for _ in generate_batch(model, None, _jobs(model, spec, batch_size, 2)):  # warm-up, before the clock
        pass
    delivered: list[dict[str, Any]] = []
    exchange = Exchange(ranks, watchdog, delivered.append, timeout)
    exchange.tick(False)  # every rank loaded and warm: the start line
    mine = _run_share(model, spec, ranks, exchange, _jobs(model, spec, rows), batch_size)
    exchange.finish()
    wall = time.monotonic() - exchange.started
    stats = json.dumps({"rows": mine[0], "tokens": mine[1], "busy_s": mine[2], "share": exchange.share()})
    gathered = collective(
        ranks,
        watchdog,
        "gathering the figures",
        STARTUP_TIMEOUT,
        lambda: all_gather_bytes(ranks, stats.encode()),
    )
    return _report(spec, model, ranks, rows, batch_size, delivered, [json.loads(g) for g in gathered], wall)


def _report(spec, model, ranks, rows, batch_size, delivered, per_rank, wall) -> dict[str, Any]:
    """Rank 0's view: rows counted as they arrived (each rank's from its ticks), and each rank's figures."""
    counted = [sum(row["rank"] == r for row in delivered) for r in range(ranks.size)]
    tokens = sum(row["generated_tokens"] for row in delivered)
    ranks_rows = [
        {
            "rank": r,
            "rows": counted[r],
            "rows_per_s": round(s["rows"] / s["busy_s"], 3) if s["busy_s"] > 0 else 0.0,
            "tok_s": round(s["tokens"] / s["busy_s"], 1) if s["busy_s"] > 0 else 0.0,
            "busy_s": round(s["busy_s"], 3),
            "exchange_share": round(s["share"], 4),
        }
        for r, s in enumerate(per_rank)
    ]
    row = {
        "prompt_tokens": spec.prompt_lengths[0],
        "canvases": spec.canvases[0],
        "rows": len(delivered),
        "wall_s": round(wall, 3),
        "rows_per_s": round(len(delivered) / wall, 3) if wall > 0 else 0.0,
        "tok_s": round(tokens / wall, 1) if wall > 0 else 0.0,
        "exchange_share": max(r["exchange_share"] for r in ranks_rows),
        "ranks": ranks_rows,
    }
    setup = {
        "mode": "data-parallel",
        "geometry": spec.model or spec.geometry,
        "precision": spec.precisions[0].name,
        "layers": model.text.num_hidden_layers,
        "canvas_length": model.canvas_length,
        "max_denoising_steps": generation_config(spec, model, 1).max_denoising_steps,
        "ranks": ranks.size,
        "prompts": rows,
        "batch_size": batch_size,
        "device": device_name(),
        "seed": spec.seed,
    }
    return {"setup": setup, "rows": [row]}
