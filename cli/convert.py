"""`dgemma convert`: parse the options, call `dgemma_mlx.convert` (dry run or conversion), print.

Registered in `cli/app.py`. Expected failures go through the shared `user_errors` handler (one red
line, exit 1); Ctrl-C exits 130, and the library has already removed the partial output by then.
Nothing here imports MLX at module level, so `dgemma convert --help` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dgemma_mlx.quant_choices import BITS, DEFAULT_RECIPE, GROUP_SIZES, MODE_FIXED, MODES, RECIPES
from dgemma_mlx.units import fmt_bytes

from .options import say, stderr, stdout, user_errors

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from dgemma_mlx.convert.plan import Plan


def convert_command(
    source: str = typer.Argument(..., help="Local Hugging Face checkpoint directory, or a hub repo id."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Directory to create for the MLX model \\[default: $DGEMMA_HOME/SOURCE_NAME-RECIPE-BITS].",
        show_default=False,
    ),
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
    settings = {
        "bits": bits,
        "group_size": group_size,
        "mode": mode,
        "dtype": dtype,
        "quantize": not no_quantize,
        "recipe": recipe,
    }
    with user_errors(interrupted="interrupted: no output written"):
        from dgemma_mlx.hub import looks_like_repo, resolve_model_path

        if not looks_like_repo(source):
            resolve_model_path(source)  # a mistyped local path answers now, before the heavy imports
        # The pipeline imports MLX and mlx-lm: only a conversion pays for that, not `dgemma --help`.
        from dgemma_mlx.convert import api
        from dgemma_mlx.convert.report import report

        if output is None:
            output = default_output(source, bits, mode, dtype, no_quantize, recipe)
            if not dry_run:
                output.parent.mkdir(parents=True, exist_ok=True)  # the models folder, on first use
            say(stderr, f"output: {output} (no -o given: the models folder, listed by `dgemma models`)")
        if dry_run:
            report(api.dry_run(source, output, force=force, **settings), stdout)
            return
        result = api.convert(source, output, force=force, progress=_progress, **settings)
        say(stdout, f"wrote {result.output} ({fmt_bytes(result.bytes_written)} in {result.seconds:.1f} s)")


def default_output(
    source: str, bits: int | None, mode: str, dtype: str, no_quantize: bool, recipe: str
) -> Path:
    """`$DGEMMA_HOME/<source name>-<recipe>-<bits or mode>` (or `-<dtype>` unquantized).

    The source name is a hub id's repo name, or a local directory's name; a Hugging Face cache
    snapshot (`models--org--name/snapshots/<hash>`) is named after its repo, not its hash.
    """
    from dgemma_mlx.catalog import models_home

    path = Path(source).expanduser()
    name = path.resolve().name if path.exists() else source.rstrip("/").rsplit("/", 1)[-1]
    if path.exists() and path.resolve().parent.name == "snapshots":
        name = path.resolve().parent.parent.name.rsplit("--", 1)[-1]
    if no_quantize:
        suffix = dtype
    elif mode in MODE_FIXED:
        suffix = f"{recipe}-{mode}"
    else:
        suffix = f"{recipe}-{bits or 4}bit"
    return models_home() / f"{name}-{suffix}"


def _progress(plan: Plan) -> AbstractContextManager:
    """The plan's notes, then a byte progress bar (plain lines off a terminal), all on stderr."""
    from dgemma_mlx.convert.progress import byte_progress

    for note in plan.notes():
        say(stderr, note)
    return byte_progress(plan.read_bytes, "converting", stderr)
