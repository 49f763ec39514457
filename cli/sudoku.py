"""`dgemma sudoku` (alias `dgemma demo`): generate or read puzzles, solve them live with the bundled model."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.text import Text

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.sudoku import ASSETS, DEFAULT_ATTEMPTS

from .options import EXIT_USER_ERROR, loading, say, stdout, user_errors


class Difficulty(str, Enum):
    easy = "easy"
    medium = "medium"
    hard = "hard"


def sudoku_command(
    puzzle: str | None = typer.Option(None, "--puzzle", help="81 cells, digits with 0 or . for blanks"),
    difficulty: Difficulty = typer.Option(Difficulty.easy, "--difficulty", "-d", help="of generated puzzles"),
    count: int = typer.Option(1, "--count", "-n", min=1, help="how many puzzles to generate and solve"),
    seed: int | None = typer.Option(None, "--seed", help="puzzle and sampler seed (random if omitted)"),
    attempts: int = typer.Option(
        DEFAULT_ATTEMPTS, "--attempts", min=1,
        help="solves to try until one is valid; each retry sees a relabelled, rearranged copy of the puzzle",
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per puzzle on stdout, no board"),
    model_path: Path = typer.Option(ASSETS, "--model", help="a Sudoku DiffusionGemma (default: bundled)"),
) -> None:
    """Watch DiffusionGemma solve Sudoku: every blank cell is refined in parallel, pass by pass.

    Exit status 1 when any answer is not a valid solution. A --puzzle must have exactly one solution:
    one with none or several is refused at once (the exact solver decides) without loading the model.
    """
    with user_errors():
        if puzzle is not None and count != 1:
            message = "--count generates puzzles: it cannot be used with --puzzle"
            raise typer.BadParameter(message, param_hint="'--count'")
        run(puzzle, difficulty.value, count, seed, attempts, as_json, model_path)


def run(
    puzzle: str | None,
    difficulty: str,
    count: int,
    seed: int | None,
    attempts: int,
    as_json: bool,
    model_path: Path,
) -> None:
    """Parse or generate the puzzles, load the model, then solve and show each puzzle in turn.

    Raises `typer.Exit(1)` after the last puzzle when any answer was not a valid solution.
    """
    from dgemma_mlx.sudoku import plan

    jobs = plan(puzzle, difficulty, count, seed)  # a bad puzzle is refused before the model loads
    if not model_path.exists():
        raise DGemmaError(f"{model_path}: no such model directory")
    # MLX and mlx-lm: paid by a solve, not by `dgemma --help` or a bad puzzle.
    with loading(model_path, quiet=as_json):
        from dgemma_mlx.loading import load
        from dgemma_mlx.sudoku.solver_model import SudokuResult, solve_stream

        from .sudoku_view import SudokuLiveView, plain_board
        from .view import NoView, drive

        model, _ = load(model_path)
    live = stdout.is_terminal and not as_json
    solved = 0
    for k, job in enumerate(jobs):
        title = f"Sudoku {k + 1}/{len(jobs)}" if len(jobs) > 1 else "Sudoku"
        view = SudokuLiveView(stdout, job.puzzle, title) if live else NoView(stdout)
        result = drive(solve_stream(model, job.puzzle, seed=job.seed, attempts=attempts), view, SudokuResult)
        solved += result.valid
        if as_json:
            print(json.dumps(result.to_dict()), flush=True)
            continue
        if not live:
            boards = f"{plain_board(job.puzzle)}\nmodel's answer\n{plain_board(result.solution)}"
            print(f"{title}: puzzle\n{boards}")
        verdict = ("valid solution", "green") if result.valid else ("not a valid solution", "red")
        tries = f" ({result.attempts} attempts)" if result.attempts > 1 else ""
        say(stdout, Text.assemble(verdict, f" after {result.passes} passes{tries}"))
    if len(jobs) > 1 and not as_json:
        say(stdout, f"solved {solved}/{len(jobs)}")
    if solved < len(jobs):
        raise typer.Exit(EXIT_USER_ERROR)
