"""The `dgemma` command: thin Typer commands over the dgemma_mlx Python API."""

from __future__ import annotations

import typer

from dgemma_mlx.convert.command import convert_command
from dgemma_mlx.sudoku.command import sudoku_command

app = typer.Typer(
    name="dgemma",
    help="DiffusionGemma on MLX: watch a canvas of noise turn into text, pass by pass.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("sudoku")(sudoku_command)
app.command("demo", help="Alias of `sudoku`: the bundled model solving Sudoku live.")(sudoku_command)
app.command("convert")(convert_command)


def main() -> None:
    app()
