"""What every command shares: resolving the model, and turning expected failures into one line."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console

from dgemma_mlx.errors import DGemmaError

MODEL_ENV = "DGEMMA_MODEL"
NO_MODEL = (
    "no model given: pass --model PATH|REPO or set DGEMMA_MODEL "
    "(convert one with `dgemma convert SOURCE -o DIR`; try the bundled demo with `dgemma sudoku`)"
)

stderr = Console(stderr=True)


def model_option() -> str | None:
    return typer.Option(None, "--model", "-m", help=f"model directory or hub repo (default: ${MODEL_ENV})")


def resolve_model(model: str | None) -> str:
    chosen = model or os.environ.get(MODEL_ENV)
    if not chosen:
        raise DGemmaError(NO_MODEL)
    path = Path(chosen).expanduser()
    if not path.exists() and chosen.count("/") != 1:
        raise DGemmaError(f"{chosen}: no such model directory. {NO_MODEL.split(': ', 1)[1]}")
    return chosen


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Expected failures exit 1 with one red line; Ctrl-C exits 130 without a traceback."""
    try:
        yield
    except DGemmaError as e:
        stderr.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("interrupted")
        raise typer.Exit(130) from None
