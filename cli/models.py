"""`dgemma models`: the DiffusionGemma checkpoints already on this machine, as a table or JSON.

Registered in `cli/app.py`. The library side is `dgemma_mlx.catalog` (config and file sizes only, no
weights); it and huggingface_hub are imported inside the command so `dgemma --help` stays fast.
"""

from __future__ import annotations

import json

import typer

from dgemma_mlx.units import fmt_bytes

from .options import say, stderr, stdout, user_errors


def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per checkpoint."),
) -> None:
    """DiffusionGemma checkpoints in the models folder ($DGEMMA_HOME) and the Hugging Face cache."""
    with user_errors():
        from dgemma_mlx.catalog import list_models, models_home
        from dgemma_mlx.hub import hub_cache_dir

        entries = list_models()
        if as_json:
            print(json.dumps([e.to_dict() for e in entries]), flush=True)
            return
        if not entries:
            say(
                stderr,
                f"no DiffusionGemma checkpoints in {models_home()} or {hub_cache_dir()}; "
                "`dgemma convert SOURCE` writes one to the first",
            )
            return
        rows = [("name", "quantization", "on disk", "memory", "path")]
        for e in entries:
            memory = f"~{fmt_bytes(e.estimated_memory_bytes)}" if e.estimated_memory_bytes else "?"
            rows.append((e.name, e.quantization, fmt_bytes(e.size_on_disk_bytes), memory, e.path))
        for line in format_table(rows):
            say(stdout, line)


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, sizes right-aligned, nothing cut: paths stay whole when piped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3}  # on disk, memory
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
