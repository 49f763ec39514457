"""The reference side of our parity tests: transformers' own DiffusionGemma on tiny random checkpoints.

Test-only (transformers and torch are dev dependencies). Checkpoints are written by the reference's
`save_pretrained`, so they carry the real key layout; weights follow spec §8.2 so that every feature
(norm weights, router scales, independent encoder/decoder layer scalars) matters to the output.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache
from transformers.models.diffusion_gemma import generation_diffusion_gemma as hf_generation

from dgemma_mlx.noise import NumpyNoise

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_TEXT = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 48,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "global_head_dim": 16,
    "num_global_key_value_heads": 1,
    "num_experts": 4,
    "top_k_experts": 2,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "use_bidirectional_attention": "vision",
}
# Quantization needs every quantized matrix's input dim divisible by the group size (32).
QUANTIZABLE_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "head_dim": 32,
    "global_head_dim": 64,
}
TINY_VISION = {
    "model_type": "gemma4_vision",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 8,
}
TINY_GENERATION = {
    "max_new_tokens": 16,
    "max_denoising_steps": 8,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "t_min": 0.4,
    "t_max": 0.8,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "eos_token_id": [1],
    "pad_token_id": 0,
}


def tiny_config(sliding_window: int = 4, canvas_length: int = 8, **text_overrides) -> DiffusionGemmaConfig:
    text = {**TINY_TEXT, "sliding_window": sliding_window, **text_overrides}
    return DiffusionGemmaConfig(
        text_config=text, vision_config=dict(TINY_VISION), canvas_length=canvas_length
    )


def write_tiny_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    dtype: str = "float32",
    embed_multiplier: float = 1.0,
    layout: str = "per_layer_config",
    max_shard_size: str | int | None = None,
    sliding_window: int = 4,
    canvas_length: int = 8,
    generation_config: dict | None = None,
    text_overrides: dict | None = None,
) -> Path:
    """Random tiny checkpoint via `save_pretrained` (spec §8.1-8.2); returns its directory."""
    path = Path(path)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(
        tiny_config(sliding_window, canvas_length, **(text_overrides or {}))
    ).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(1 + 0.3 * torch.randn_like(param))
            elif "experts" in name:  # the reference initialises experts to tiny values; make them matter
                param.copy_(0.1 * torch.randn_like(param))
        for name, buf in model.named_buffers():
            if name.endswith("layer_scalar"):
                buf.copy_(torch.rand_like(buf) + 0.5)
        model.model.decoder.embed_tokens.weight.mul_(embed_multiplier)
    model = model.to(TORCH_DTYPES[dtype])
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(path, **kwargs)
    config = json.loads((path / "config.json").read_text())
    if layout == "legacy":
        text = config["text_config"]
        full = next(iter(text.pop("per_layer_config").values()))
        text["global_head_dim"] = full["head_dim"]
        text["num_global_key_value_heads"] = full["num_key_value_heads"]
        (path / "config.json").write_text(json.dumps(config, indent=2))
    else:
        assert "per_layer_config" in config["text_config"]
    (path / "generation_config.json").write_text(json.dumps({**TINY_GENERATION, **(generation_config or {})}))
    return path


@lru_cache(maxsize=8)
def load_reference(path: str | Path, dtype: str = "float32") -> DiffusionGemmaForBlockDiffusion:
    """The reference model, loaded with `from_pretrained(dtype=...)` (never `.to()`, spec §6.4)."""
    return DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), dtype=TORCH_DTYPES[dtype]).eval()


def _encode(model, ids: torch.Tensor, cache: DynamicCache, start: int, attention_mask=None) -> DynamicCache:
    positions = torch.arange(start, start + ids.shape[1])[None]
    out = model.model.encoder(
        input_ids=ids, cache=cache, position_ids=positions, attention_mask=attention_mask
    )
    return out.cache


def _decode(model, canvas: torch.Tensor, cache: DynamicCache, start: int, sc=None, mask=None) -> torch.Tensor:
    positions = torch.arange(start, start + canvas.shape[1])[None]
    out = model(
        decoder_input_ids=canvas,
        cache=cache,
        decoder_position_ids=positions,
        self_conditioning_logits=sc,
        decoder_attention_mask=mask,
    )
    return out.logits


def _cache_lengths(cache: DynamicCache) -> list[int]:
    return [int(layer.keys.shape[-2]) for layer in cache.layers]


def reference_forward(
    path: str | Path,
    prompt_ids: np.ndarray,
    canvas1: np.ndarray,
    canvas2: np.ndarray,
    sc_scale: float = 1.7,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Spec §8.3: first canvas with and without self-conditioning, then a second canvas."""
    model = load_reference(path, dtype)
    ids, c1, c2 = (torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in (prompt_ids, canvas1, canvas2))
    P, L = ids.shape[1], c1.shape[1]
    with torch.no_grad():
        cache = _encode(model, ids, DynamicCache(config=model.config.get_text_config(decoder=True)), 0)
        after_prompt = _cache_lengths(cache)
        snapshot = [layer.keys.clone() for layer in cache.layers]
        first = _decode(model, c1, cache, P)
        with_sc = _decode(model, c1, cache, P, sc=(sc_scale * first).to(model.dtype))
        assert all(torch.equal(a, layer.keys) for a, layer in zip(snapshot, cache.layers, strict=True))
        cache = _encode(model, c1, cache, P)
        second = _decode(model, c2, cache, P + L)
    return {
        "logits_first": first.float().numpy(),
        "logits_sc": with_sc.float().numpy(),
        "logits_second": second.float().numpy(),
        "cache_lengths_after_prompt": np.array(after_prompt),
        "cache_lengths_after_canvas": np.array(_cache_lengths(cache)),
    }


def reference_forward_padded(
    path: str | Path, prompt_ids: np.ndarray, attention_mask: np.ndarray, canvas: np.ndarray
) -> np.ndarray:
    """First-canvas logits for a left-padded batch, built the way `generate()` builds its masks."""
    model = load_reference(path)
    ids = torch.from_numpy(np.asarray(prompt_ids, dtype=np.int64))
    mask2d = torch.from_numpy(np.asarray(attention_mask).astype(bool))
    canvas_t = torch.from_numpy(np.asarray(canvas, dtype=np.int64))
    P, L = ids.shape[1], canvas_t.shape[1]
    with torch.no_grad():
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        positions = torch.arange(P)[None]
        enc_masks = model.model.encoder.create_masks_for_generate(
            config=model.config,
            inputs_embeds=torch.empty((ids.shape[0], P, 0), dtype=model.dtype),
            attention_mask=mask2d,
            cache=cache,
            position_ids=positions,
            mm_token_type_ids=None,
        )
        cache = model.model.encoder(
            input_ids=ids, cache=cache, position_ids=positions, attention_mask=enc_masks
        ).cache
        dec_mask2d = torch.nn.functional.pad(mask2d, (0, L), value=True)
        dec_masks = model.model.decoder.create_diffusion_decoder_attention_mask(
            config=model.config,
            inputs_embeds=canvas_t.unsqueeze(-1),
            cache=cache,
            decoder_attention_mask=dec_mask2d,
        )
        return _decode(model, canvas_t, cache, P, mask=dec_masks).float().numpy()


@contextmanager
def replayed_noise(noise: NumpyNoise, canvas_length: int, vocab_size: int):
    """Route the reference sampler's two random draws through `noise` (spec §8.6)."""

    def initialize_canvas(self, batch_size, device):
        return torch.from_numpy(noise.canvas_np(batch_size, canvas_length, vocab_size)).to(device)

    def multinomial(probs, num_samples=1, **_):
        gumbel = torch.from_numpy(noise.gumbel_np(probs.shape[0], vocab_size))
        return torch.argmax(torch.log(probs) + gumbel, dim=-1, keepdim=True)

    with (
        mock.patch.object(hf_generation.EntropyBoundSampler, "initialize_canvas", initialize_canvas),
        mock.patch.object(torch, "multinomial", multinomial),
    ):
        yield


def reference_generate(
    path: str | Path,
    input_ids: np.ndarray,
    seed: int,
    *,
    attention_mask: np.ndarray | None = None,
    dtype: str = "float32",
    **gen_kwargs,
) -> dict:
    """Run the reference `generate()` on numpy-seeded noise; returns sequences, tpf and the draws made."""
    model = load_reference(path, dtype)
    noise = NumpyNoise(seed)
    kwargs = dict(gen_kwargs)
    if "entropy_bound" in kwargs:
        kwargs["sampler_config"] = hf_generation.EntropyBoundSamplerConfig(float(kwargs.pop("entropy_bound")))
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64))
    ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
    with (
        torch.no_grad(),
        replayed_noise(noise, model.config.canvas_length, model.config.text_config.vocab_size),
    ):
        out = model.generate(ids, return_dict_in_generate=True, **kwargs)
    return {
        "sequences": out.sequences.numpy(),
        "tokens_per_forward": out.tokens_per_forward.float().numpy(),
        "draws": noise.draws,
    }


def dequantized_to_hf(path_out: str | Path, weights: dict[str, np.ndarray], like: str | Path) -> Path:
    """Write float32 weights under HF names next to `like`'s configs, for reference runs (spec §8.4).

    Every tensor `like` stores must be supplied, except vision-tower tensors, which are copied over.
    """
    path_out, like = Path(path_out), Path(like)
    path_out.mkdir(parents=True, exist_ok=True)
    stored: dict[str, torch.Tensor] = {}
    for shard in sorted(like.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                stored[key] = f.get_tensor(key)
    missing = sorted(k for k in stored if k not in weights and "vision" not in k)
    extra = sorted(k for k in weights if k not in stored)
    if missing or extra:
        raise KeyError(f"key sets differ: missing {missing[:3]}, unexpected {extra[:3]}")
    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(weights[k], dtype=np.float32))
        if k in weights
        else v.float().contiguous()
        for k, v in stored.items()
    }
    save_file(tensors, str(path_out / "model.safetensors"), metadata={"format": "pt"})
    for name in ("config.json", "generation_config.json"):
        (path_out / name).write_text((like / name).read_text())
    return path_out
