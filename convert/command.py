"""`dgemma convert`: a thin Typer function over source -> plan -> streamed, verified output.

Registered in `cli/app.py`. Every expected failure is a `DGemmaError`, shown as one red line on stderr
with exit status 1; Ctrl-C removes the partial output and exits 130.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.quantization import BITS, DEFAULT_RECIPE, GROUP_SIZES, MODES, RECIPES

if TYPE_CHECKING:
    from .plan import Plan


def convert_command(
    source: str = typer.Argument(..., help="Local Hugging Face checkpoint directory, or a hub repo id."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory to create for the MLX model."),
    bits: int = typer.Option(
        None, "--bits", help=f"Bits per quantized weight: {', '.join(map(str, BITS))} (default 4)."
    ),
    group_size: int = typer.Option(
        None,
        "--group-size",
        help=f"Weights sharing one scale: {', '.join(map(str, GROUP_SIZES))} "
        "(default 64; fixed by mxfp/nvfp modes).",
    ),
    mode: str = typer.Option("affine", "--mode", help=f"Quantization mode: {', '.join(MODES)}."),
    dtype: str = typer.Option(
        "bfloat16", "--dtype", help="dtype of everything left unquantized: bfloat16, float16, float32."
    ),
    no_quantize: bool = typer.Option(False, "--no-quantize", help="Keep every weight in --dtype."),
    recipe: str = typer.Option(
        DEFAULT_RECIPE,
        "--recipe",
        help="Precision recipe: " + "; ".join(f"{k}: {v}" for k, v in RECIPES.items()) + ".",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan, sizes and memory estimate, then exit."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it already exists."),
) -> None:
    """Convert a Hugging Face DiffusionGemma checkpoint to MLX (4-bit by default), in bounded memory."""
    # The pipeline imports MLX and mlx-lm: only a conversion pays for that, not `dgemma --help`.
    from .output import convert_checkpoint
    from .plan import ConvertOptions, build_plan, fmt_bytes, recipe_sizes, report
    from .progress import byte_progress
    from .source import open_source

    out, err = Console(), Console(stderr=True)
    try:
        options = ConvertOptions.resolve(bits, group_size, mode, dtype, not no_quantize, recipe)
        checkpoint = open_source(source)
        plan = build_plan(checkpoint, options)
        if dry_run:
            report(plan, recipe_sizes(checkpoint, options), out, _destination_notes(plan, output, force))
            return
        for note in plan.notes():
            err.print(note, markup=False, highlight=False, soft_wrap=True)
        with byte_progress(plan.read_bytes, "converting", err) as advance:
            result = convert_checkpoint(plan, output, force, advance)
        out.print(
            f"wrote {result.output} ({fmt_bytes(result.bytes_written)} in {result.seconds:.1f} s)",
            markup=False,
            highlight=False,
        )
    except DGemmaError as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted: no output written", style="red", markup=False, highlight=False)
        raise typer.Exit(130) from None


def _destination_notes(plan: Plan, output: Path, force: bool) -> list[str]:
    """What a real run would say about OUT, without writing anything."""
    from .output import check_destination, required_bytes
    from .plan import fmt_bytes

    output = Path(output).expanduser()
    need = required_bytes(plan)
    notes = []
    try:
        check_destination(output, plan.source.directory, force)
    except DGemmaError as e:
        notes.append(f"Output  {e}")
    parent = output.parent if output.parent.exists() else None
    if parent is not None:
        free = shutil.disk_usage(parent).free
        verdict = "enough" if free >= need else "NOT ENOUGH"
        notes.append(f"Disk    needs {fmt_bytes(need)} at {parent}, {fmt_bytes(free)} free ({verdict})")
    return notes
