"""Named model geometries and precisions for `dgemma bench`, as plain data (no MLX import).

A benchmark must be reproducible from a name: `26b-a4b` is the released model's text geometry
(`config.RELEASED_TEXT_CONFIG`), `mid` the mid-size one the speed notes are measured on, `tiny` a
seconds-long smoke test, `sudoku` the bundled checkpoint (real weights). `--layers N` cuts a random
geometry to its first N layers so the released shapes fit a small machine; the layer pattern is kept
and the last layer is full attention, as the config parser forces. Everything here is checked before
the command imports MLX, so a typo answers at once (`cli/bench.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import FULL, RELEASED_TEXT_CONFIG, SLIDING, ModelConfig
from .errors import DGemmaError
from .quant_choices import BITS, MODE_FIXED, RECIPES

SUDOKU = "sudoku"  # the bundled checkpoint: real weights, its own config.json


def _mid_text() -> dict[str, Any]:
    """The mid-size geometry of shared/notes/PERF-PROFILE.md (the old benchmarks/pass_time.py shapes):
    vocab 32768, hidden 512, 6 layers (5 sliding + 1 full), 8 experts top-2."""
    hidden, head = 512, 64
    return {
        "vocab_size": 32768,
        "hidden_size": hidden,
        "intermediate_size": hidden,
        "moe_intermediate_size": hidden // 4,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": head,
        "global_head_dim": 2 * head,
        "num_global_key_value_heads": 1,
        "num_experts": 8,
        "top_k_experts": 2,
        "sliding_window": 1024,
        "layer_types": [SLIDING] * 5 + [FULL],
    }


def _tiny_text() -> dict[str, Any]:
    """Small enough for a test to run every path in seconds, large enough that 64-wide quantization
    groups apply to every weight class."""
    return {
        "vocab_size": 512,
        "hidden_size": 128,
        "intermediate_size": 128,
        "moe_intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "global_head_dim": 64,
        "num_global_key_value_heads": 1,
        "num_experts": 4,
        "top_k_experts": 2,
        "sliding_window": 64,
        "layer_types": [SLIDING, FULL],
    }


@dataclass(frozen=True)
class Geometry:
    """A named shape: its text config (None for `sudoku`, read from the bundled checkpoint), canvas
    length and default prompt length."""

    name: str
    about: str
    text: dict[str, Any] | None
    canvas_length: int
    layers: int


GEOMETRIES: dict[str, Geometry] = {
    "26b-a4b": Geometry(
        "26b-a4b",
        "google/diffusiongemma-26B-A4B-it's text geometry (30 layers, 128 experts top-8, vocab 262144)",
        {**RELEASED_TEXT_CONFIG},
        256,
        RELEASED_TEXT_CONFIG["num_hidden_layers"],
    ),
    "mid": Geometry("mid", "vocab 32768, hidden 512, 6 layers, 8 experts top-2", _mid_text(), 256, 6),
    "tiny": Geometry("tiny", "vocab 512, hidden 128, 2 layers, canvas 32 (smoke tests)", _tiny_text(), 32, 2),
    SUDOKU: Geometry(SUDOKU, "the bundled Sudoku checkpoint (real weights, canvas 81)", None, 81, 4),
}


def geometry(name: str) -> Geometry:
    """The named geometry, or a one-line error listing the names."""
    if name not in GEOMETRIES:
        raise DGemmaError(f"unknown geometry {name!r} (choose from {', '.join(GEOMETRIES)})")
    return GEOMETRIES[name]


def check_layers(name: str, layers: int | None) -> None:
    """`--layers` cuts a random-weight geometry; the bundled checkpoint runs whole."""
    if layers is None:
        return
    g = geometry(name)
    if g.text is None:
        raise DGemmaError(f"--layers cuts a random-weight geometry; {name} is a checkpoint and runs whole")
    if not 1 <= layers <= g.layers:
        raise DGemmaError(f"--layers must be between 1 and {g.layers} for {name}, got {layers}")


def geometry_config(name: str, layers: int | None = None) -> ModelConfig:
    """The ModelConfig of a random-weight geometry, cut to its first `layers` layers."""
    check_layers(name, layers)
    g = geometry(name)
    if g.text is None:
        raise DGemmaError(f"{name} is a checkpoint, not a random-weight geometry")
    text = dict(g.text)
    n = layers or g.layers
    pattern = text.get("layer_types") or [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(g.layers)]
    text["layer_types"] = list(pattern[:n])
    text["num_hidden_layers"] = n
    raw = {"model_type": "diffusion_gemma", "canvas_length": g.canvas_length, "text_config": text}
    return ModelConfig.from_dict(raw, source=f"geometry {name}")


# -- precisions ----------------------------------------------------------------------------------------
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
STORED = "stored"  # a checkpoint as its files are
QUANT_NAMES = tuple(f"{b}bit" for b in BITS) + tuple(MODE_FIXED)
PRECISIONS = (*FLOAT_DTYPES, *QUANT_NAMES, STORED)


@dataclass(frozen=True)
class Precision:
    """How weights are held: a float dtype, or quantized (`bits`, `mode`, `recipe`) with activations in
    `dtype`. `stored` leaves a checkpoint as it is."""

    name: str
    dtype: str | None = None  # activations and unquantized weights; None with `stored`
    bits: int | None = None
    mode: str = "affine"
    group_size: int = 64
    recipe: str = "mixed"

    @property
    def quantized(self) -> bool:
        return self.bits is not None

    def label(self) -> str:
        """What a report row shows: `4bit mixed (bfloat16)`, `float32`, `stored`."""
        if not self.quantized:
            return self.name
        return f"{self.name} {self.recipe} ({self.dtype})"


def parse_precision(name: str, dtype: str, recipe: str = "mixed", group_size: int = 64) -> Precision:
    """`float32`, `bfloat16`, `float16`, `4bit` (any of quant_choices.BITS), `mxfp4`, `mxfp8`, `nvfp4` or
    `stored`; quantized ones keep their activations in `dtype`."""
    if name not in PRECISIONS:
        raise DGemmaError(f"unknown precision {name!r} (choose from {', '.join(PRECISIONS)})")
    if dtype not in FLOAT_DTYPES:
        raise DGemmaError(f"unknown dtype {dtype!r} (choose from {', '.join(FLOAT_DTYPES)})")
    if recipe not in RECIPES:
        raise DGemmaError(f"unknown precision recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    if name == STORED:
        return Precision(STORED)
    if name in FLOAT_DTYPES:
        return Precision(name, dtype=name)
    if name in MODE_FIXED:
        fixed_group, bits = MODE_FIXED[name]
        return Precision(name, dtype, bits, name, fixed_group, recipe)
    return Precision(name, dtype, int(name.removesuffix("bit")), "affine", group_size, recipe)


def parse_counts(text: str, what: str) -> tuple[int, ...]:
    """`128,512` -> (128, 512): positive integers, in the order given, duplicates dropped."""
    values: list[int] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise DGemmaError(f"{what} must be positive integers separated by commas, got {text!r}")
        if int(piece) not in values:
            values.append(int(piece))
    return tuple(values)


def parse_names(text: str) -> tuple[str, ...]:
    """`float32,4bit` -> ('float32', '4bit'), duplicates dropped."""
    names: list[str] = []
    for piece in text.split(","):
        if piece.strip() and piece.strip() not in names:
            names.append(piece.strip())
    if not names:
        raise DGemmaError("no precision given")
    return tuple(names)
