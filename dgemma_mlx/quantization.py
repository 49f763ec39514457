"""Which weights get quantized, at how many bits, and how a saved quantization map is re-applied.

Precision changes how many denoising passes a canvas needs, not only output quality, and the embedding
is also the LM head and the self-conditioning input, so recipes decide per weight class. Norms, scalars
and the router always stay unquantized. The saved map follows mlx-lm's convention (top-level defaults
plus per-path overrides, `False` for paths left in float), so mlx-lm tooling can read our checkpoints.
The choices themselves (modes, bits, recipes) are plain data in `quant_choices.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .errors import DGemmaError
from .layout import tree_block
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


def stored_params(entry: dict[str, Any]) -> dict[str, Any]:
    """Quantization parameters from a config entry; what it lacks comes from its mode's defaults.

    mlx-lm and mlx-vlm pass per-module entries to `to_quantized` as they stand, so an entry without
    `mode` is affine even in an mxfp4/nvfp4 conversion, and so it is here.
    """
    mode = entry.get("mode", "affine")
    if mode not in MODES:
        raise DGemmaError(f"unknown quantization mode {mode!r} in config.json")
    group_size, bits = MODE_FIXED.get(mode, (64, 4))
    return {"group_size": entry.get("group_size", group_size), "bits": entry.get("bits", bits), "mode": mode}


def check_packed_shapes(
    path: str, in_dim: int, params: dict[str, Any], stored: Mapping[str, mx.array], name: Callable[[str], str]
) -> None:
    """The bits, group size and mode the stored tensors imply must be those the config says.

    Packed weights are uint32 words holding `32 / bits` values along the input axis; scales hold one
    value per group; only affine stores biases. `name` turns a tensor of this tree into the
    "file: checkpoint key" that the one-line error shows.
    """
    weight, scales = stored[f"{path}.weight"], stored[f"{path}.scales"]
    bits, group_size, mode = params["bits"], params["group_size"], params["mode"]
    said = f"config.json says {bits}-bit {mode} group size {group_size}"
    if weight.dtype != mx.uint32:
        raise DGemmaError(f"{name(path + '.weight')} is {weight.dtype}, not packed uint32 ({said})")
    if weight.shape[-1] * 32 != in_dim * bits:
        implied = weight.shape[-1] * 32 / in_dim
        raise DGemmaError(
            f"{name(path + '.weight')} is {weight.shape[-1]} words wide for input size {in_dim}: "
            f"{implied:g} bits, but {said}"
        )
    if scales.shape[-1] * group_size != in_dim:
        raise DGemmaError(
            f"{name(path + '.scales')} is {scales.shape[-1]} wide for input size {in_dim}: group size "
            f"{in_dim / max(scales.shape[-1], 1):g}, but {said}"
        )
    has_biases = f"{path}.biases" in stored
    if has_biases != (mode == "affine"):
        what = "stores biases" if has_biases else "has no biases"
        raise DGemmaError(f"{name(path + ('.biases' if has_biases else '.scales'))}: {what}, but {said}")


def apply_quantization_map(
    model: nn.Module,
    block: dict[str, Any] | None,
    stored: Mapping[str, mx.array],
    name: Callable[[str], str] = str,
) -> None:
    """Swap in quantized modules exactly where, and as, the checkpoint's files are quantized.

    A module is quantized by its per-module entry (keyed by our module path or by the public one,
    `layout.tree_block`), else by the top-level defaults when its `.scales` are stored, else it stays
    float; what the tensors' shapes imply is checked against that before anything is loaded.
    """
    block = tree_block(block or {})
    defaults = {k: block[k] for k in ("group_size", "bits", "mode") if k in block}
    decisions: dict[str, dict[str, Any]] = {}
    for path, module in model.named_modules():
        if not hasattr(module, "to_quantized") or f"{path}.weight" not in stored:
            continue
        entry, quantized = block.get(path, True), f"{path}.scales" in stored
        if entry is False or (entry is True and not quantized):
            if quantized:
                raise DGemmaError(f"{name(path + '.scales')} is stored, but config.json leaves it in float")
            continue
        if not quantized:
            raise DGemmaError(f"{name(path + '.weight')} has no .scales, but config.json quantizes it")
        if entry is True and not defaults:
            raise DGemmaError(f"{name(path + '.scales')} is stored, but config.json has no quantization")
        params = stored_params(defaults) if entry is True else stored_params(entry)
        check_packed_shapes(path, module.weight.shape[-1], params, stored, name)
        decisions[path] = params

    nn.quantize(model, class_predicate=lambda path, module: dict(decisions.get(path, {})) or False)
