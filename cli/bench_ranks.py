"""`dgemma bench` under `mlx.launch` without `--pipeline` (or with `--rows` in one process): data-parallel
generation's rows/s overall and per rank and the exchange share, one table or JSON object from rank 0
(the measuring is dgemma_mlx/bench_ranks.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from dgemma_mlx.distributed import DEFAULT_TIMEOUT, launched
from dgemma_mlx.errors import DGemmaError

from .options import say

DEFAULT_ROWS = 16
RANK_COLUMNS = (
    ("rank", "rank", "d"),
    ("rows", "rows", "d"),
    ("rows_per_s", "rows/s", ".2f"),
    ("tok_s", "tok/s", ".1f"),
    ("busy_s", "busy s", ".2f"),
    ("exchange_share", "exchange %", ".1%"),
)


def data_parallel(o: dict[str, Any]) -> bool:
    """Whether this run measures data-parallel generation: under a launcher, or asked with --rows."""
    return not o["pipeline"] and (o["rows"] is not None or launched())


def check_ranked_options(o: dict[str, Any]) -> None:
    """One precision, prompt length and canvas count, the exact sampler: anything else is one line."""
    if o["ar"] or o["fast"] is not None or o["knobs"] is not None:
        raise DGemmaError("data-parallel bench times the exact sampler: drop --ar, --fast and --knobs")
    if "," in o["prompt"] or "," in o["canvases"]:
        raise DGemmaError("data-parallel bench takes one --prompt length and one --canvases count")
    for option in ("rows", "batch_size"):
        if o[option] is not None and o[option] < 1:
            raise DGemmaError(f"--{option.replace('_', '-')} must be 1 or more, got {o[option]}")


def bench_across_ranks(
    o: dict[str, Any], make_spec: Callable[[dict[str, Any]], Any], console: Console
) -> None:
    """`dgemma bench --pipeline` (cli/pipeline_bench.py) or the data-parallel measurement below."""
    if o["pipeline"]:
        from .pipeline_bench import bench_pipelined, check_pipeline_options

        check_pipeline_options(o)
        return bench_pipelined(make_spec(o), o["as_json"], console)
    return bench_ranked(o, make_spec, console)


def bench_ranked(o: dict[str, Any], make_spec: Callable[[dict[str, Any]], Any], console: Console) -> None:
    """Check the options, join the group (a group of one without a launcher), run this rank's part,
    print on rank 0. `make_spec` is bench's own option checking (cli/bench.py `_spec`)."""
    check_ranked_options(o)
    spec = make_spec(o)
    from dgemma_mlx import distributed as D
    from dgemma_mlx.bench_ranks import run_ranked_bench

    if len(spec.precisions) != 1:
        raise DGemmaError("data-parallel bench measures one precision at a time")
    ranks = D.init() if launched() else D.Ranks(None, 0, 1, [])
    watchdog = D.Watchdog(ranks) if ranks.distributed else None
    D.stop_on_sigterm(ranks)
    rows, batch_size = o["rows"] or DEFAULT_ROWS, o["batch_size"]
    try:
        report = run_ranked_bench(spec, ranks, watchdog, rows, batch_size, DEFAULT_TIMEOUT)
    except D.RankLost as e:
        D.exit_now(str(e))
    D.done_with_peers()
    if not ranks.is_root:
        return
    if o["as_json"]:
        print(json.dumps(report), flush=True)
    else:
        print_ranked(report, console)


def print_ranked(report: dict[str, Any], console: Console) -> None:
    s, row = report["setup"], report["rows"][0]
    say(
        console,
        f"{s['geometry']} · {s['precision']} · {s['layers']} layers · {s['ranks']} rank(s) · {s['prompts']} "
        f"prompts of {row['prompt_tokens']} tokens, batch {s['batch_size']}, {row['canvases']} canvas(es), "
        f"at most {s['max_denoising_steps']} passes · {s['device']}",
    )
    say(
        console,
        f"all ranks: {row['rows']} rows in {row['wall_s']:.2f} s = {row['rows_per_s']:.2f} rows/s, "
        f"{row['tok_s']:.1f} tok/s; exchange share (largest rank) {row['exchange_share']:.1%}",
    )
    table = Table()
    for _, title, _ in RANK_COLUMNS:
        table.add_column(title, justify="right")
    for r in row["ranks"]:
        table.add_row(*(format(r[key], fmt) for key, _, fmt in RANK_COLUMNS))
    console.print(table)
