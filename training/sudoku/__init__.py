"""Training the bundled Sudoku DiffusionGemma: `python -m training.sudoku.train` (see TRAINING.md)."""
