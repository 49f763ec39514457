"""Sudoku: puzzles, an exact solver, and the bundled tiny DiffusionGemma that solves them."""
