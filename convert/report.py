"""The `--dry-run` report: tensors by class and precision, each recipe's size, output, memory and disk.

Kept apart from the planner so that the plan stays data and this module only renders it (Rich table,
plain lines that never wrap mid-path when piped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dgemma_mlx.units import fmt_bytes, fmt_count

if TYPE_CHECKING:
    from rich.console import Console

    from .api import DryRun

COLUMNS = (
    ("class", "left"),
    ("stored as", "left"),
    ("tensors", "right"),
    ("parameters", "right"),
    ("size", "right"),
)


def report(result: DryRun, console: Console) -> None:
    """Print a dry run on `console`."""
    from rich.table import Table

    plan, sizes = result.plan, result.recipe_sizes
    src = plan.source
    files = len({t.file for t in src.tensors.values()})
    skipped = f"; {len(plan.skipped)} not needed (vision, rotary, tied copies)" if plan.skipped else ""
    _line(
        console,
        f"Source  {src.directory} ({'/'.join(src.dtypes)}, {fmt_bytes(src.weight_bytes)} in {files} file(s), "
        f"{len(src.tensors)} tensors{skipped})",
    )
    _line(console, f"Plan    {plan.options.describe()}")
    table = Table(show_edge=False, pad_edge=False)
    for col, justify in COLUMNS:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for cls, storage, count, params, nbytes in plan.by_class():
        storage = plan.options.dtype if storage == "float" else storage
        table.add_row(cls, storage, str(count), fmt_count(params), fmt_bytes(nbytes))
    total_params = sum(t.params for t in plan.targets)
    table.add_row("total", "", str(len(plan.targets)), fmt_count(total_params), fmt_bytes(plan.output_bytes))
    console.print(table)
    chosen = plan.options.recipe if plan.options.quantize else "no-quantize"
    side = ", ".join(p.name for p in src.side_files) or "no tokenizer or chat template (none in the source)"
    recipes = ", ".join(
        f"{name} {fmt_bytes(n)}{' (chosen)' if name == chosen else ''}" for name, n in sizes.items()
    )
    _line(console, f"Recipes {recipes}")
    _line(
        console,
        f"Output  {len(plan.shards)} shard(s) of at most {fmt_bytes(plan.options.max_shard_bytes)}, "
        f"{fmt_bytes(plan.output_bytes)}, plus index, config.json and {side}",
    )
    _line(
        console,
        f"Memory  peak about {fmt_bytes(plan.memory_estimate)}: "
        f"reads {fmt_bytes(plan.max_chunk_bytes)} slices "
        "one at a time, so this does not grow with the model",
    )
    for note in result.notes:
        _line(console, note)


def _line(console: Console, text: str) -> None:
    """Text, never markup (paths may hold brackets), and never hard-wrapped."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
