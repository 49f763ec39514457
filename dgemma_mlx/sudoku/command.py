"""`dgemma sudoku` (alias `dgemma demo`): generate or read puzzles, solve them live with the bundled model."""

from __future__ import annotations

import json
import random
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from ..errors import DGemmaError
from ..events import PassEvent
from . import ASSETS, DEFAULT_ATTEMPTS
from .puzzles import DIFFICULTIES, format_puzzle, generate_puzzle, parse_puzzle


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
    err = Console(stderr=True)
    try:
        run(puzzle, difficulty.value, count, seed, attempts, as_json, model_path)
    except DGemmaError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def run(
    puzzle: str | None,
    difficulty: str,
    count: int,
    seed: int | None,
    attempts: int,
    as_json: bool,
    model_path: Path,
) -> None:
    from ..loading import load  # MLX and mlx-lm: paid by a solve, not by `dgemma --help`

    assert difficulty in DIFFICULTIES
    grids = [parse_puzzle(puzzle)] if puzzle is not None else None
    model, _ = load(model_path)
    rng = random.Random(seed)
    if grids is None:
        grids = [list(generate_puzzle(rng, difficulty).puzzle) for _ in range(count)]
    console = Console()
    live = console.is_terminal and not as_json
    solved = 0
    for k, grid in enumerate(grids):
        sample_seed = rng.randrange(2**31) if seed is not None else None
        title = f"Sudoku {k + 1}/{len(grids)}" if len(grids) > 1 else "Sudoku"
        result = solve_one(model, console, grid, sample_seed, attempts, title, live, as_json)
        solved += result.valid
        if as_json:
            print(json.dumps(
                {"puzzle": format_puzzle(grid), "solution": format_puzzle(result.solution),
                 "valid": result.valid, "passes": result.passes, "attempts": result.attempts}
            ), flush=True)
    if len(grids) > 1 and not as_json:
        console.print(f"solved {solved}/{len(grids)}")


def solve_one(model, console: Console, grid, seed, attempts: int, title: str, live: bool, quiet: bool):
    """Solve one grid, drawing the board live on a terminal or plain text (no ANSI) otherwise."""
    from dgemma_mlx.cli.sudoku_view import SudokuLiveView, plain_board

    from .solver_model import AttemptEvent, SudokuResult, solve_stream

    events = solve_stream(model, grid, seed=seed, attempts=attempts)
    result = None
    if live:
        with SudokuLiveView(console, grid, title) as view:
            for event in events:
                if isinstance(event, AttemptEvent):
                    view.start_attempt(event)
                elif isinstance(event, PassEvent):
                    view.update(event)
                elif isinstance(event, SudokuResult):
                    result = event
    else:
        result = next(e for e in events if isinstance(e, SudokuResult))
    assert result is not None
    if not quiet:
        if not live:
            print(f"{title}: puzzle\n{plain_board(grid)}\nmodel's answer\n{plain_board(result.solution)}")
        verdict = "[green]valid solution[/]" if result.valid else "[red]not a valid solution[/]"
        tries = f" ({result.attempts} attempts)" if result.attempts > 1 else ""
        console.print(f"{verdict} after {result.passes} passes{tries}", highlight=False)
    return result
