"""Tiny DiffusionGemma checkpoints written by mlx-vlm's own converter, and mlx-vlm's own forward pass.

Test-only (mlx-vlm is a dev dependency, like transformers; nothing outside tests imports it).
mlx-vlm's `convert` wrote the mlx-community DiffusionGemma checkpoints Mac users download, so these
are the files our loader has to read, in their real layout, at a tiny geometry:

- the source is a random checkpoint written by transformers' `save_pretrained`
  (`hf_reference.write_tiny_checkpoint`, the parity recipe's weights) in bfloat16 like the released
  model, plus the 128-word tokenizer of `tiny_models` (mlx-vlm's converter loads a processor);
- `convert_with_mlx_vlm` runs mlx-vlm's real converter (its Python API) into one of `KINDS`:
  "affine4" (its default: 4-bit affine, group 64, with the 8-bit modules its DiffusionGemma
  `quant_predicate` chooses), "mxfp4" (the same predicate in mxfp4 mode) and "bf16" (unquantized);
- `dequantized_hf_weights` reads a converted directory back *independently of our loader*
  (mlx-vlm's safetensors + its `quantization` map, `mx.dequantize`, then renamed to the HF keys), so
  the reference can run on exactly the weights the file holds;
- `vlm_forward` runs mlx-vlm's own model on the same inputs our `test_parity.mlx_forward` takes.

Quirk found while writing this (mlx-vlm 0.7.10): its `TextConfig` does not read transformers'
`per_layer_config`; it takes `global_head_dim` / `num_global_key_value_heads` from `text_config` and
otherwise defaults them to the released model's 512 / 2. So the tiny sources use the "legacy" config
layout (which spells those keys out and which transformers still reads), or mlx-vlm could not load
them at all.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
from hf_reference import write_tiny_checkpoint
from tiny_models import SHARPEN, write_word_tokenizer

# Every quantized matrix's input dim divides by 64 (affine group) and 32 (mxfp4 group): hidden 64,
# dense and expert intermediate 64, attention outputs 4 x 32 (sliding) and 4 x 64 (full).
VLM_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 64,
    "moe_intermediate_size": 64,
    "head_dim": 32,
    "global_head_dim": 64,
}
VOCAB_SIZE = 128  # the word tokenizer's vocabulary (tiny_models.WORD_VOCAB_SIZE)
SOURCE_DTYPE = "bfloat16"  # what the released checkpoint stores
KINDS = ("affine4", "mxfp4", "bf16")
CONVERT_ARGS = {
    "affine4": {"quantize": True},  # the converter's defaults: affine, 4 bits, group 64
    # mxfp4 fixes the group at 32; the converter's group_size default (64) must be overridden.
    "mxfp4": {"quantize": True, "q_mode": "mxfp4", "q_group_size": 32},
    "bf16": {"quantize": False},
}


def write_source(path: str | Path, *, seed: int = 11, sharpened: bool = True) -> Path:
    """The HF source checkpoint: random parity-recipe weights in bf16, legacy config, word tokenizer."""
    path = write_tiny_checkpoint(
        path,
        seed=seed,
        dtype=SOURCE_DTYPE,
        embed_multiplier=SHARPEN if sharpened else 1.0,
        layout="legacy",
        vocab_size=VOCAB_SIZE,
        text_overrides=VLM_TEXT,
    )
    write_word_tokenizer(path)
    return path


def convert_with_mlx_vlm(source: str | Path, out: str | Path, kind: str) -> Path:
    """mlx-vlm's own converter, `mlx_vlm.convert(...)`, on `source` into `out` (its output quietened)."""
    from mlx_vlm import convert

    if kind not in CONVERT_ARGS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    with contextlib.redirect_stdout(io.StringIO()):
        convert(str(source), str(out), **CONVERT_ARGS[kind])
    return Path(out)


def read_safetensors(directory: str | Path) -> dict[str, mx.array]:
    weights: dict[str, mx.array] = {}
    for shard in sorted(Path(directory).glob("*.safetensors")):
        weights.update(mx.load(str(shard)))
    if not weights:
        raise FileNotFoundError(f"no *.safetensors in {directory}")
    return weights


def quantization_of(directory: str | Path) -> dict:
    """The `quantization` block mlx-vlm wrote to config.json ({} for an unquantized conversion)."""
    return json.loads((Path(directory) / "config.json").read_text()).get("quantization", {})


def _module_params(quantization: dict, module: str) -> dict:
    """group_size / bits / mode of one module, as mlx-vlm's loader reads them.

    A module's own entry is passed to `to_quantized(**entry)`, so a missing "mode" there means MLX's
    default, affine, whatever the global mode: mlx-vlm's mxfp4 conversions keep their 8-bit modules
    (embedding, attention, dense MLP, router) affine at group 64, with entries that carry no mode.
    """
    own = quantization.get(module)
    if isinstance(own, dict):
        return {
            "group_size": own.get("group_size", quantization["group_size"]),
            "bits": own.get("bits", quantization["bits"]),
            "mode": own.get("mode", "affine"),
        }
    return {
        "group_size": quantization["group_size"],
        "bits": quantization["bits"],
        "mode": quantization.get("mode", "affine"),
    }


# mlx-vlm key -> HF key: the experts are the only tensors mlx-vlm renames (it adds ".weight").
_HF_NAMES = {
    ".experts.gate_up_proj.weight": ".experts.gate_up_proj",
    ".experts.down_proj.weight": ".experts.down_proj",
}


def hf_name(key: str) -> str:
    for suffix, hf_suffix in _HF_NAMES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)] + hf_suffix
    return key


def dequantized_hf_weights(directory: str | Path) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The text weights of an mlx-vlm conversion as float32 numpy under HF names, read from the file.

    Returns (weights, quantized) where `quantized` maps each quantized module to its parameters.
    Vision-tower tensors are left out (the reference harness copies them from the source).
    """
    quantization = quantization_of(directory)
    weights = read_safetensors(directory)
    quantized = {key.removesuffix(".scales") for key in weights if key.endswith(".scales")}
    out: dict[str, np.ndarray] = {}
    params_of: dict[str, dict] = {}
    for key, value in weights.items():
        if "vision" in key:
            continue
        module = key.rsplit(".", 1)[0]
        if module in quantized:
            if not key.endswith(".weight"):
                continue  # scales / biases, consumed below
            params = _module_params(quantization, module)
            params_of[module] = params
            scales, biases = weights[f"{module}.scales"], weights.get(f"{module}.biases")
            if mx.issubdtype(scales.dtype, mx.floating):  # affine: w = q * s + b, exact in float32
                scales = scales.astype(mx.float32)
            if biases is not None:
                biases = biases.astype(mx.float32)
            value = mx.dequantize(
                value,
                scales,
                biases,
                group_size=params["group_size"],
                bits=params["bits"],
                mode=params["mode"],
            )
        out[hf_name(key)] = np.array(value.astype(mx.float32))
    return out, params_of


# --- mlx-vlm's own model --------------------------------------------------------------------------------


def load_vlm(directory: str | Path):
    """mlx-vlm's DiffusionGemma `Model`, loaded by its own loader (no processor needed)."""
    from mlx_vlm.utils import load_model

    return load_model(Path(directory))


def vlm_forward(model, prompt: np.ndarray, canvas1: np.ndarray, canvas2: np.ndarray, sc_scale: float = 1.7):
    """The parity recipe's passes through mlx-vlm's model, as `test_parity.mlx_forward` makes them.

    Encode the prompt; decode canvas1 without and with `sc_scale * logits_first` as self-conditioning
    logits; encode canvas1; decode canvas2. Float32 numpy out.
    """
    cache = model.make_cache()
    model.diffusion_prefill_cache(
        mx.array(prompt),
        attention_mask=None,
        cache=cache,
        pixel_values=None,
        mm_token_type_ids=None,
        prefill_step_size=None,
        chunk_prefill=False,
    )
    first = model.diffusion_decoder_logits(mx.array(canvas1), cache)
    sc = (sc_scale * first).astype(model.model.decoder.norm.weight.dtype)  # the compute dtype
    with_sc = model.model.decoder(mx.array(canvas1), cache=cache, self_conditioning_logits=sc)
    with_sc = model._softcap(model.model.decoder.embed_tokens.as_linear(with_sc))
    model.diffusion_update_cache(mx.array(canvas1), cache=cache)
    second = model.diffusion_decoder_logits(mx.array(canvas2), cache)
    return {
        "logits_first": np.array(first.astype(mx.float32)),
        "logits_sc": np.array(with_sc.astype(mx.float32)),
        "logits_second": np.array(second.astype(mx.float32)),
    }
