"""The quantization settings a user may choose, as plain data: no MLX import.

`dgemma convert --help` lists these, and help must answer without importing MLX; the code that
applies them lives in `quantization.py`.
"""

from __future__ import annotations

MODES = ("affine", "mxfp4", "mxfp8", "nvfp4")
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)
# Group sizes / bits that a mode fixes (mlx-lm's defaults_for_mode).
MODE_FIXED = {"mxfp4": (32, 4), "mxfp8": (32, 8), "nvfp4": (16, 4)}
RECIPES = {
    "uniform": "every matrix at the chosen bits (router excepted)",
    "mixed": "experts at the chosen bits; attention, dense MLP, self-conditioning and embedding at 8-bit",
    "experts-only": "experts at the chosen bits; everything else left in float",
}
# What `dgemma convert` uses unless told otherwise: the smallest recipe that kept the bundled Sudoku
# model's solve rate and passes (docs/MEASUREMENTS.md, "The default quantization recipe").
DEFAULT_RECIPE = "mixed"
