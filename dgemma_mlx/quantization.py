"""Which weights get quantized, at how many bits, and how a saved quantization map is re-applied.

Precision changes how many denoising passes a canvas needs, not only output quality, and the embedding
is also the LM head and the self-conditioning input, so recipes decide per weight class. Norms, scalars
and the router always stay unquantized. The saved map follows mlx-lm's convention (top-level defaults
plus per-path overrides, `False` for paths left in float), so mlx-lm tooling can read our checkpoints.
The choices themselves (modes, bits, recipes) are plain data in `quant_choices.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.nn as nn

from .errors import DGemmaError
from .quant_choices import MODE_FIXED, MODES, RECIPES


def weight_class(path: str) -> str:
    """Coarse class of a module path, used by recipes and by `convert --dry-run` reports."""
    if ".experts." in path:
        return "experts"
    if path.endswith("router.proj"):
        return "router"
    if "embed_tokens" in path:
        return "embedding"
    if ".self_attn." in path:
        return "attention"
    if "self_conditioning" in path:
        return "self_conditioning"
    if ".mlp." in path:
        return "dense_mlp"
    return "other"


def quant_params(bits: int, group_size: int, mode: str) -> dict[str, Any]:
    if mode not in MODES:
        raise DGemmaError(f"unknown quantization mode {mode!r} (choose from {', '.join(MODES)})")
    if mode in MODE_FIXED:
        group_size, bits = MODE_FIXED[mode]
    return {"group_size": group_size, "bits": bits, "mode": mode}


def recipe_predicate(recipe: str, bits: int, group_size: int, mode: str = "affine") -> Callable:
    """A `class_predicate` for `nn.quantize`: returns params, or False to leave a module in float."""
    if recipe not in RECIPES:
        raise DGemmaError(f"unknown precision recipe {recipe!r} (choose from {', '.join(RECIPES)})")
    main = quant_params(bits, group_size, mode)
    high = quant_params(8, group_size, "affine")

    def predicate(path: str, module: nn.Module) -> dict[str, Any] | bool:
        if not hasattr(module, "to_quantized"):
            return False
        cls = weight_class(path)
        if cls in ("router", "other"):
            return False
        params = main if recipe == "uniform" or cls == "experts" else (high if recipe == "mixed" else None)
        if params is None or module.weight.shape[-1] % params["group_size"]:
            return False
        return dict(params)

    return predicate


def quantize_model(
    model: nn.Module, bits: int = 4, group_size: int = 64, mode: str = "affine", recipe: str = "uniform"
) -> dict[str, Any]:
    """Quantize in place; return the config block to save under `quantization` in config.json."""
    predicate = recipe_predicate(recipe, bits, group_size, mode)
    block: dict[str, Any] = dict(quant_params(bits, group_size, mode))

    def recording(path: str, module: nn.Module):
        decision = predicate(path, module)
        if hasattr(module, "to_quantized"):
            block[path] = decision
        return decision

    nn.quantize(model, class_predicate=recording)
    return block


def apply_quantization_map(model: nn.Module, block: dict[str, Any], stored: set[str]) -> None:
    """Swap in quantized modules where the checkpoint holds quantized weights, before loading them."""
    defaults = {k: block[k] for k in ("group_size", "bits", "mode") if k in block}
    defaults.setdefault("mode", "affine")

    def predicate(path: str, module: nn.Module):
        if path in block:
            return block[path]
        if not hasattr(module, "to_quantized") or f"{path}.scales" not in stored:
            return False
        return dict(defaults)

    nn.quantize(model, class_predicate=predicate)
