"""Sudoku: puzzles, an exact solver, and the bundled tiny DiffusionGemma that solves them."""

from pathlib import Path

# The bundled checkpoint; here rather than in solver_model so `dgemma --help` can name it without
# importing the model code.
ASSETS = Path(__file__).parent / "assets"
