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
# What `dgemma convert` uses unless told otherwise. Measured on the bundled Sudoku model (README): on the
# run-2 weights mixed kept float's solve rate and passes while uniform, with a 4-bit embedding, needed ~3
# more passes; on the shipped run-6 weights (100 medium puzzles) mixed and experts-only match each other
# (the 8-bit layers change nothing measurable) a little under float, uniform a little further; experts-only
# would cost more memory for no gain.
DEFAULT_RECIPE = "mixed"
