"""The opt-in fast-decoding knobs and their presets, as plain data: no MLX import.

Every knob is a `GenerationConfig` field that is None (off) by default, so the reference sampler is what
runs unless a caller asks for a knob; `dgemma generate/chat/batch --help` lists them from here without
importing MLX. What each knob does to a pass lives in `fast.py`; why a preset holds what it holds (the
Sudoku first-attempt rule, measured by `benchmarks/fast_presets.py`) is in docs/MEASUREMENTS.md,
"Fast decoding presets".
"""

from __future__ import annotations

from typing import Any

from .errors import DGemmaError

# Knob -> what it does, as `--help` and the README say it.
KNOBS: dict[str, str] = {
    "max_passes": "Stop each canvas after this many passes and commit its draft (the temperature "
    "schedule stays that of max_denoising_steps). Off by default.",
    "accept_confidence": "Also accept (keep instead of renoising) every position whose draft has at least "
    "this probability, with its draft token (the confidence-threshold sampler of other ports). "
    "Off by default.",
    "commit_confidence": "Freeze a position for the rest of its canvas once its draft repeated for "
    "commit_stability passes with at least this probability (held like a pinned position). Off by default.",
    "commit_stability": "Passes a draft must repeat before commit_confidence freezes it (1 when unset).",
    "self_conditioning_top_k": "Self-condition on each position's k most probable tokens only (a gather "
    "of k embedding rows instead of a product with the whole vocabulary). Off by default.",
}
FAST_FIELDS = tuple(KNOBS)

# Shipped presets: only combinations that kept the bundled Sudoku model's first-attempt solve rate
# within 2 points of the exact sampler on the same fresh puzzles (docs/MEASUREMENTS.md).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"self_conditioning_top_k": 8},
}
FAST_KEY = "fast"  # the override / body field / `key=value` name that selects a preset


def preset(name: str) -> dict[str, Any]:
    """A preset's knob values (a copy); an unknown name is one line naming the presets."""
    if name not in PRESETS:
        raise DGemmaError(f"unknown fast preset {name!r} (choose from: {', '.join(PRESETS)}, or none)")
    return dict(PRESETS[name])


def expand(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with a `fast` entry replaced by every knob: the preset's values, the others None;
    knobs given explicitly (not None) win over the preset.

    `fast=none` gives every knob None: through `GenerationConfig.replace_explicit` (chat's /params) that
    turns them all off, and through `replace` (which skips None) it changes nothing.
    """
    if FAST_KEY not in overrides:
        return overrides
    rest = {k: v for k, v in overrides.items() if k != FAST_KEY}
    name = overrides[FAST_KEY]
    if isinstance(name, str) and name.lower() == "none":
        name = None
    if name is not None and not isinstance(name, str):
        raise DGemmaError(f"fast must be a preset name ({', '.join(PRESETS)}) or none, got {name!r}")
    chosen = preset(name) if name is not None else {}
    explicit = {k: v for k, v in rest.items() if v is not None or k not in FAST_FIELDS}
    return {**dict.fromkeys(FAST_FIELDS), **chosen, **explicit}


def describe(name: str) -> str:
    """`fast: self_conditioning_top_k=8, commit_confidence=0.9` for help texts and reports."""
    return f"{name}: " + ", ".join(f"{k}={v}" for k, v in PRESETS[name].items())
