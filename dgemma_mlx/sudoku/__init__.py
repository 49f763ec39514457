"""Sudoku: puzzles, an exact solver, and the bundled tiny DiffusionGemma that solves them."""

from pathlib import Path

# Here rather than in solver_model so `dgemma --help` can name them without importing the model code.
ASSETS = Path(__file__).parent / "assets"  # the bundled checkpoint
DEFAULT_ATTEMPTS = 8  # solves `dgemma sudoku` and the benchmark try per puzzle (solver_model explains)
