"""`dgemma sudoku` (alias `dgemma demo`): generate or read puzzles, solve them live with the bundled model."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from dgemma_mlx.sudoku import ASSETS, DEFAULT_ATTEMPTS

from .options import stdout, user_errors


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
    """Watch DiffusionGemma solve Sudoku: every blank cell is refined in parallel, pass by pass."""
    with user_errors():
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
    """Parse or generate the puzzles, load the model, then solve and show each puzzle in turn."""
    # MLX and mlx-lm: paid by a solve, not by `dgemma --help`.
    from dgemma_mlx.loading import load
    from dgemma_mlx.sudoku import plan
    from dgemma_mlx.sudoku.solver_model import SudokuResult, solve_stream

    from .sudoku_view import SudokuLiveView, plain_board
    from .view import NoView, drive

    jobs = plan(puzzle, difficulty, count, seed)
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
        verdict = "[green]valid solution[/]" if result.valid else "[red]not a valid solution[/]"
        tries = f" ({result.attempts} attempts)" if result.attempts > 1 else ""
        stdout.print(f"{verdict} after {result.passes} passes{tries}", highlight=False)
    if len(jobs) > 1 and not as_json:
        stdout.print(f"solved {solved}/{len(jobs)}")
