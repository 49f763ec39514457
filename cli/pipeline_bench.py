"""`dgemma bench --pipeline` under `mlx.launch`: one table (or JSON object) from rank 0
(the measuring is dgemma_mlx/pipeline_bench.py)."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from dgemma_mlx.errors import DGemmaError

COLUMNS = (
    ("prompt_tokens", "prompt", "d"),
    ("alone_ms", "1 process ms", ".1f"),
    ("pass_ms", "pipelined ms", ".1f"),
    ("compute_ms", "compute ms", ".1f"),
    ("comm_ms", "comm ms", ".1f"),
    ("comm_pct", "comm %", ".1f"),
    ("wire_ms", "wire ms", ".2f"),
    ("bytes_per_pass", "bytes/pass", ",d"),
)


def check_pipeline_options(o: dict[str, Any]) -> None:
    """What --pipeline measures is one pass at one precision: the options that grow the grid differently
    are refused in one line before anything is imported."""
    from .pipeline import check_launched

    check_launched(True)
    if o["ar"] or o["fast"] is not None or o["knobs"] is not None:
        raise DGemmaError("--pipeline times the exact pass alone: drop --ar, --fast and --knobs")
    if o["canvases"] != "1":
        raise DGemmaError("--pipeline times one pass per prompt length: drop --canvases")


def bench_pipelined(spec: Any, as_json: bool, console: Console) -> None:
    from dgemma_mlx.pipeline import pipeline_ranks
    from dgemma_mlx.pipeline_bench import run_pipeline_bench

    if len(spec.precisions) != 1:
        raise DGemmaError("--pipeline measures one precision at a time")
    ranks = pipeline_ranks()
    report = run_pipeline_bench(spec, ranks)
    if not ranks.is_root:
        return
    if as_json:
        print(json.dumps(report), flush=True)
        return
    s = report["setup"]
    table = Table(
        title=f"{s['geometry']} · {s['precision']} · {s['layers']} layers over {s['ranks']} ranks "
        f"({s['layers_per_rank']}) · {s['device']}"
    )
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right")
    table.add_column("stage ms", justify="right")
    for row in report["rows"]:
        cells = [format(row[key], fmt) for key, _, fmt in COLUMNS]
        stages = " + ".join(f"{v:.1f}" for v in row["stage_ms"]) + f" + head {row['head_ms']:.1f}"
        table.add_row(*cells, stages)
    console.print(table)
