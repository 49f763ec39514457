"""Checkpoint names <-> this module tree: the one place that knows how the public layout is spelled.

The public layout is the Hugging Face key tree kept verbatim, which is what mlx-vlm's converter writes
and what most Mac users have: `model.decoder.*` for the shared weights, encoder layer scalars under
`model.encoder.language_model.layers.N.layer_scalar`, experts fused as `experts.gate_up_proj` (gate
rows first) and `experts.down_proj`, each with `.weight/.scales/.biases` when quantized. The raw HF
checkpoint spells the experts without `.weight`; our older conversions used mlx-lm's
`experts.switch_glu.{gate,up,down}_proj` names, which are this module tree's own names.

Quantization packs along the input (last) axis, so gate and up rows of a fused tensor split cleanly for
`.weight`, `.scales` and `.biases` alike, and quantizing the fused tensor equals quantizing its halves.
Loading (`loading.py`) and `dgemma convert` share these functions so what one writes the other reads.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import mlx.core as mx

from .errors import DGemmaError

ENCODER_TEXT = "model.encoder.language_model."
VISION_MARKERS = ("vision_tower", "embed_vision")
_IGNORED_MARKERS = (*VISION_MARKERS, "rotary_emb")
_ENCODER_SCALAR = re.compile(r"model\.encoder\.language_model\.layers\.\d+\.layer_scalar")
# `<base>.experts.gate_up_proj[.weight|.scales|.biases]` and the same for down_proj.
_PUBLIC_EXPERT = re.compile(r"(.+\.experts)\.(gate_up_proj|down_proj)(?:\.(weight|scales|biases))?")
_TREE_EXPERT = re.compile(r"(.+\.experts)\.switch_glu\.(gate_proj|up_proj|down_proj)")
FUSED_HALVES = ("gate_proj", "up_proj")  # gate rows first


def is_vision(key: str) -> bool:
    return any(m in key for m in VISION_MARKERS)


def is_ignored(key: str) -> bool:
    """Tensors the text model never reads: the vision tower, rotary tables, an untied LM head copy."""
    return any(m in key for m in _IGNORED_MARKERS) or key.startswith("lm_head")


def to_tree(weights: Mapping[str, mx.array]) -> tuple[dict[str, mx.array], dict[str, str]]:
    """Checkpoint tensors (public, raw HF or our older names) -> this tree's names, plus each one's source.

    Encoder copies of decoder tensors are tied and stored once (the decoder's wins); a fused
    `gate_up_proj` is split in two on axis -2. The source map names the checkpoint key each tree tensor
    came from, so errors name what is actually in the files.
    """
    out: dict[str, mx.array] = {}
    source: dict[str, str] = {}
    for key, value in weights.items():
        if is_ignored(key):
            continue
        name = key
        if key.startswith(ENCODER_TEXT) and not _ENCODER_SCALAR.fullmatch(key):
            name = "model.decoder." + key[len(ENCODER_TEXT) :]
            if name in weights:
                continue
        match = _PUBLIC_EXPERT.fullmatch(name)
        if match is None:
            out[name], source[name] = value, key
            continue
        base, proj, part = match.group(1), match.group(2), match.group(3) or "weight"
        if proj == "down_proj":
            tree = f"{base}.switch_glu.down_proj.{part}"
            out[tree], source[tree] = value, key
            continue
        rows = value.shape[-2] if value.ndim >= 2 else 0
        if rows % 2:
            raise DGemmaError(f"{key} has {rows} rows: a fused gate_up_proj holds gate and up rows alike")
        for half, piece in zip(FUSED_HALVES, mx.split(value, 2, axis=-2), strict=True):
            tree = f"{base}.switch_glu.{half}.{part}"
            out[tree], source[tree] = mx.contiguous(piece), key
    return out, source


def public_module(path: str) -> str:
    """A module path of this tree -> its public name (both expert halves map to `gate_up_proj`)."""
    match = _TREE_EXPERT.fullmatch(path)
    if match is None:
        return path
    base, proj = match.groups()
    return f"{base}.{'down_proj' if proj == 'down_proj' else 'gate_up_proj'}"


def tree_modules(path: str) -> list[str]:
    """A public module path -> the module path(s) of this tree it covers (identity for all but experts)."""
    match = _PUBLIC_EXPERT.fullmatch(path)
    if match is None or match.group(3):
        return [path]
    base, proj = match.group(1), match.group(2)
    halves = ("down_proj",) if proj == "down_proj" else FUSED_HALVES
    return [f"{base}.switch_glu.{h}" for h in halves]


def public_name(name: str) -> str:
    """A tensor name of this tree -> its public one (`experts.switch_glu.up_proj.scales` ->
    `experts.gate_up_proj.scales`)."""
    path, _, leaf = name.rpartition(".")
    return f"{public_module(path)}.{leaf}" if path else name


def tree_block(block: Mapping[str, object]) -> dict[str, object]:
    """A `quantization` config block with per-module entries re-keyed to this tree's module paths."""
    out: dict[str, object] = {}
    for key, value in block.items():
        for path in tree_modules(key) if isinstance(value, dict | bool) else [key]:
            out[path] = value
    return out
