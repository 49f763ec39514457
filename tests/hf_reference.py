"""The reference side of our parity tests: transformers' own DiffusionGemma on tiny random checkpoints.

Test-only (transformers and torch are dev dependencies). Everything here takes and returns numpy so
the MLX tests can compare without touching torch.

- Checkpoints are written by the reference's `save_pretrained`, so they carry the real key layout
  (decoder-only text weights, separate encoder `layer_scalar`s, vision tower, no `lm_head`).
- Weights are randomised as the parity recipe says (docs/ARCHITECTURE.md), so every feature (norm
  weights, router scales, independent encoder and decoder layer scalars) changes the output and a port
  that skips one fails.
- Forward passes replay exactly the calls `generate()` makes (DynamicCache, int32 positions, the
  model's own mask helpers, `model.forward` as the decoder).
- Generation routes the sampler's two random draws through a numpy noise tape.

Reference quirks found while writing this (transformers 5.24), and what the harness does about them:

- `generate(**kwargs)` silently ignores unknown keys: whatever the generation config does not know
  (`temperature=`, `do_sample=`, typos) is forwarded to `forward()` as a model kwarg and dropped.
  `reference_generate` rejects unknown keys instead.
- `confidence_threshold` must be a Python float and `stability_threshold` an int; a violation raises
  `AttributeError` (the error message reads a non-existent `entropy_bound` attribute), not
  `ValueError`. `sampler_config` passed to `generate` must be the dataclass; a dict is rejected
  (dicts are only resolved when read from `generation_config.json`). We coerce both.
- `null` in `generation_config.json` means "use the global default" (0.4/0.8, stability 1, ...), so
  temperature and adaptive stopping can only be switched off by passing `None` to `generate`.
- `save_pretrained` writes a `generation_config.json` whose diffusion fields are all null, i.e. the
  global defaults (256 new tokens, 48 steps); `write_tiny_checkpoint` replaces it.
- `max_length` overrides `max_new_tokens` only when the latter resolves to exactly 256, but it also
  adds a `MaxLengthCriteria` that ends generation after the first canvas reaching it.
- `DiffusionGemmaEncoderModel.forward` builds a vision-aware mask when given a 2-D mask and then
  discards it; `generate()` avoids this by passing the prebuilt mask dict, and so do we.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import TINY_GEOMETRY
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache
from transformers.models.diffusion_gemma import generation_diffusion_gemma as hf_generation

from dgemma_mlx.noise import CANVAS, GUMBEL, NumpyNoise, TapeExhausted

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUTS = ("per_layer_config", "legacy")

# The parity geometry (docs/ARCHITECTURE.md, "Tests and benchmarks"). W=4 is smaller than both the
# prompt (7) and the canvas (8), so the sliding cache trims.
TINY_TEXT = {
    **TINY_GEOMETRY,
    "vocab_size": 128,
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
# Only here because the constructor requires a vision config; the text path never reads it.
TINY_VISION = {
    "model_type": "gemma4_vision",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 8,
}
# Large confidence threshold + tiny temperature: rows stop after different numbers of passes.
EARLY_STOP = {
    "stability_threshold": 1,
    "confidence_threshold": 1000.0,
    "entropy_bound": 1e6,
    "t_min": 0.01,
    "t_max": 0.02,
}
# The released generation_config.json values, except: short lengths so tests run fast, and EOS {1}
# (the released [1, 106, 50] are all valid ids for V=128 and would end random generations too often).
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
    "return_dict_in_generate": True,
}


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
    return TORCH_DTYPES[dtype]


def tiny_config(
    sliding_window: int = 4, canvas_length: int = 8, **text_overrides: Any
) -> DiffusionGemmaConfig:
    """The the tiny parity geometry config (text overrides on top), as the reference's own config object."""
    text = {**TINY_TEXT, "sliding_window": sliding_window, **text_overrides}
    return DiffusionGemmaConfig(
        text_config=text, vision_config=dict(TINY_VISION), canvas_length=canvas_length
    )


def _randomize(model: DiffusionGemmaForBlockDiffusion, embed_multiplier: float) -> None:
    """Randomised weights (the parity recipe), so that every parameter the port must read changes the output.

    `_init_weights` leaves every 1-D parameter at 1 and every layer scalar at 1 (a port ignoring them
    would pass), and the experts at N(0, 0.02), where GELU is nearly linear. Matrices other than the
    experts stay at the reference's N(0, 0.02): the many RMSNorms rescale their outputs anyway.
    """
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied tensors are listed once
            if param.ndim == 1:  # norm weights, router scale / per_expert_scale (and vision norms)
                param.copy_(1 + 0.3 * torch.randn_like(param))
            elif "experts" in name:  # make the experts' nonlinearity matter
                param.copy_(0.1 * torch.randn_like(param))
        for name, buf in model.named_buffers():  # encoder and decoder scalars are separate buffers
            if name.endswith("layer_scalar"):
                buf.copy_(torch.rand_like(buf) + 0.5)
        model.model.decoder.embed_tokens.weight.mul_(embed_multiplier)  # tied: encoder and LM head too


def _to_legacy(config: dict) -> dict:
    """Older serialisation: `global_head_dim` / `num_global_key_value_heads` keys."""
    text = config["text_config"]
    overrides = list(text.pop("per_layer_config").values())
    full = overrides[0]
    if any(o != full for o in overrides):
        raise ValueError(f"legacy layout needs identical full layers, got {overrides}")
    text["global_head_dim"] = full["head_dim"]
    text["num_global_key_value_heads"] = full["num_key_value_heads"]
    return config


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
    vocab_size: int = 128,
    generation_config: dict | None = None,
    text_overrides: dict | None = None,
) -> Path:
    """Random tiny checkpoint via `save_pretrained` (the parity recipe); returns its directory.

    `embed_multiplier=tiny_models.SHARPEN` sharpens the logits so acceptance and adaptive stopping trigger.
    `layout="legacy"` rewrites config.json to the pre-`per_layer_config` form. `generation_config`
    overrides `TINY_GENERATION` key by key (a value of None writes null = "global default").
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    torch_dtype = _torch_dtype(dtype)
    path = Path(path)
    torch.manual_seed(seed)
    text = {"vocab_size": vocab_size, **(text_overrides or {})}
    model = DiffusionGemmaForBlockDiffusion(tiny_config(sliding_window, canvas_length, **text)).eval()
    _randomize(model, embed_multiplier)
    # Casting is fine for *writing* (rotary inv_freq buffers are not saved); only loading must avoid `.to()`.
    model = model.to(torch_dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)

    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    if "per_layer_config" not in config["text_config"]:
        raise AssertionError("save_pretrained no longer writes per_layer_config; revisit the legacy layout")
    if layout == "legacy":
        config_file.write_text(json.dumps(_to_legacy(config), indent=2))

    gen = {**TINY_GENERATION, **(generation_config or {})}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    hf_generation.DiffusionGemmaGenerationConfig.from_pretrained(path)  # validates what we wrote
    return path


_MODELS: dict[tuple, DiffusionGemmaForBlockDiffusion] = {}
_MAX_CACHED_MODELS = 8


def _fingerprint(path: Path) -> tuple:
    """Cache key part that changes when the checkpoint is rewritten in place."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors"))
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def load_reference(path: str | Path, dtype: str = "float32") -> DiffusionGemmaForBlockDiffusion:
    """The reference model in eval mode, loaded with `from_pretrained(dtype=...)`, never `.to()`, which
    would cast the float32 rotary tables.

    Default attention implementation (sdpa on CPU, like the reference's own default). Cached per
    (directory, dtype, file stamps) so a test module can call the reference repeatedly for free.
    """
    path = Path(path).resolve()
    key = (str(path), dtype, _fingerprint(path))
    if key not in _MODELS:
        if len(_MODELS) >= _MAX_CACHED_MODELS:
            _MODELS.pop(next(iter(_MODELS)))
        model = DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), dtype=_torch_dtype(dtype))
        _MODELS[key] = model.eval()
    return _MODELS[key]


def clear_reference_cache() -> None:
    """Drop the cached reference models (frees memory)."""
    _MODELS.clear()


# --- forward passes, the way generate() makes them --------------------------------------------------


def _tensor(a: np.ndarray, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _positions(start: int, length: int) -> torch.Tensor:
    return torch.arange(start, start + length, dtype=torch.int32)[None]  # int32, [1, S], as generate()


def _encode(model, ids: torch.Tensor, mask2d: torch.Tensor, cache: DynamicCache, start: int) -> None:
    """Encoder call of generate() step 1.a: mask dict from the 2-D mask over *all* tokens so far."""
    positions = _positions(start, ids.shape[1])
    masks = model.model.encoder.create_masks_for_generate(
        config=model.config,
        inputs_embeds=torch.empty((ids.shape[0], ids.shape[1], 0), dtype=model.dtype),
        attention_mask=mask2d,
        cache=cache,
        position_ids=positions,
        mm_token_type_ids=None,
    )
    model.model.encoder(input_ids=ids, attention_mask=masks, cache=cache, position_ids=positions)


def _decode(
    model, canvas: torch.Tensor, mask2d: torch.Tensor, cache: DynamicCache, start: int, sc=None
) -> torch.Tensor:
    """Decoder pass of generate() steps 1.b/1.c.i: `model.forward` with the diffusion mask dict."""
    dec_mask2d = torch.nn.functional.pad(mask2d, (0, canvas.shape[1]), value=True)
    masks = model.model.decoder.create_diffusion_decoder_attention_mask(
        config=model.config,
        inputs_embeds=canvas.unsqueeze(-1),
        cache=cache,
        decoder_attention_mask=dec_mask2d,
    )
    out = model(
        decoder_input_ids=canvas,
        self_conditioning_logits=sc,
        decoder_attention_mask=masks,
        cache=cache,
        decoder_position_ids=_positions(start, canvas.shape[1]),
    )
    return out.logits


def _cache_lengths(cache: DynamicCache) -> list[int]:
    """Stored K length per layer: W-1 on sliding layers, everything on full layers."""
    return [int(layer.keys.shape[-2]) for layer in cache.layers]


def _snapshot(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def _assert_unchanged(cache: DynamicCache, snapshot: list, seq_length: int) -> None:
    assert cache.get_seq_length() == seq_length, "the decoder changed the cache length"
    for i, ((k, v), layer) in enumerate(zip(snapshot, cache.layers, strict=True)):
        assert torch.equal(k, layer.keys) and torch.equal(v, layer.values), f"decoder mutated layer {i}"


def _forward(
    model,
    prompt_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    canvas1: np.ndarray,
    canvas2: np.ndarray | None,
    sc_scale: float,
) -> dict[str, np.ndarray]:
    ids = _tensor(prompt_ids)
    c1 = _tensor(canvas1)
    B, P = ids.shape
    L = c1.shape[1]
    mask = (
        torch.ones((B, P), dtype=torch.bool)
        if attention_mask is None
        else _tensor(attention_mask, torch.bool)
    )
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != prompt shape {tuple(ids.shape)}")
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        _encode(model, ids, mask, cache, 0)
        out["cache_lengths_after_prompt"] = np.array(_cache_lengths(cache))
        before, seq_length = _snapshot(cache), cache.get_seq_length()
        first = _decode(model, c1, mask, cache, P)
        sc = (sc_scale * first).to(model.model.decoder.embed_tokens.weight.dtype)  # as generate() casts it
        with_sc = _decode(model, c1, mask, cache, P, sc=sc)
        _assert_unchanged(cache, before, seq_length)
        out["logits_first"] = first.float().numpy()
        out["logits_sc"] = with_sc.float().numpy()
        if canvas2 is not None:
            mask = torch.nn.functional.pad(mask, (0, L), value=True)
            _encode(model, c1, mask, cache, P)
            out["cache_lengths_after_canvas"] = np.array(_cache_lengths(cache))
            out["logits_second"] = _decode(model, _tensor(canvas2), mask, cache, P + L).float().numpy()
    return out


def reference_forward(
    path: str | Path,
    prompt_ids: np.ndarray,
    canvas1: np.ndarray,
    canvas2: np.ndarray,
    sc_scale: float = 1.7,
    *,
    attention_mask: np.ndarray | None = None,
    dtype: str = "float32",
) -> dict[str, np.ndarray]:
    """Forward-pass fixtures from the reference, all float32 numpy.

    Encode the prompt at 0..P-1; decode `canvas1` at P..P+L-1 without ("logits_first") and with
    `self_conditioning_logits = sc_scale * logits_first` ("logits_sc"); encode `canvas1`; decode
    `canvas2` at P+L.. ("logits_second"). Also the per-layer stored K lengths after the prompt and
    after the canvas. Asserts that the decoder left the cache untouched. `attention_mask` ([B, P],
    1 = real token) runs a left-padded batch the way `generate()` does.
    """
    model = load_reference(path, dtype)
    return _forward(model, prompt_ids, attention_mask, canvas1, canvas2, sc_scale)


def reference_forward_padded(
    path: str | Path,
    prompt_ids: np.ndarray,
    attention_mask: np.ndarray,
    canvas: np.ndarray,
    *,
    dtype: str = "float32",
) -> np.ndarray:
    """First-canvas logits [B, L, V] for a left-padded batch (2-D mask, positions not shifted)."""
    model = load_reference(path, dtype)
    return _forward(model, prompt_ids, attention_mask, canvas, None, 1.0)["logits_first"]


# --- generation with a noise tape ---------------------------------------------------------------------


class _Draws:
    """The two random draws generate() makes, served from a seed (recording) or a tape (replaying)."""

    def __init__(self, noise: int | Sequence[tuple[str, np.ndarray]]):
        self.recorder = NumpyNoise(int(noise)) if isinstance(noise, int | np.integer) else None
        self.tape = None if self.recorder is not None else list(noise)
        self.used: list[tuple[str, np.ndarray]] = []

    def _pop(self, kind: str, shape: tuple[int, ...]) -> np.ndarray:
        position = len(self.used)
        if position >= len(self.tape):
            raise TapeExhausted(f"noise tape exhausted after {position} draws (reference wanted {kind})")
        got_kind, value = self.tape[position]
        value = np.asarray(value)
        if got_kind != kind:
            raise AssertionError(f"tape draw {position} is {got_kind!r}, the reference asked for {kind!r}")
        if value.size != int(np.prod(shape)):  # same leniency as TapeNoise: [B, L, V] == [B*L, V]
            raise AssertionError(f"tape draw {position} ({kind}) has shape {value.shape}, wanted {shape}")
        value = value.reshape(shape)
        self.used.append((kind, value))
        return value

    def canvas(self, batch: int, length: int, vocab_size: int) -> np.ndarray:
        if self.recorder is not None:
            value = self.recorder.canvas_np(batch, length, vocab_size)
            self.used.append((CANVAS, value))
            return value
        value = self._pop(CANVAS, (batch, length))
        if value.size and not (0 <= value.min() and value.max() < vocab_size):
            raise AssertionError(f"tape draw {len(self.used) - 1} (C) has ids outside [0, {vocab_size})")
        return value

    def gumbel(self, rows: int, vocab_size: int) -> np.ndarray:
        if self.recorder is not None:
            value = self.recorder.gumbel_np(rows, vocab_size)
            self.used.append((GUMBEL, value))
            return value
        return self._pop(GUMBEL, (rows, vocab_size))


@contextmanager
def replayed_noise(noise: int | Sequence[tuple[str, np.ndarray]]) -> Iterator[_Draws]:
    """Route the reference sampler's two random draws through a seed or tape.

    Yields the draw source, whose `.used` lists the draws consumed so far; restores both patches on exit.

    "C": `EntropyBoundSampler.initialize_canvas` (initial canvas and every renoise).
    "S": `torch.multinomial(probs, 1)` in `_denoising_step` becomes `argmax(log(probs) + g)`.
    """

    draws = _Draws(noise)

    def initialize_canvas(self, batch_size, device):
        value = draws.canvas(batch_size, self.canvas_length, self.vocab_size)
        return torch.from_numpy(value.astype(np.int64)).to(device)

    def multinomial(probs, num_samples=1, replacement=False, **_):
        if num_samples != 1 or probs.ndim != 2:
            raise AssertionError(f"unexpected multinomial call: shape {tuple(probs.shape)}, n={num_samples}")
        gumbel = torch.from_numpy(draws.gumbel(probs.shape[0], probs.shape[1]).astype(np.float32))
        return torch.argmax(torch.log(probs.float()) + gumbel, dim=-1, keepdim=True)

    with (
        mock.patch.object(hf_generation.EntropyBoundSampler, "initialize_canvas", initialize_canvas),
        mock.patch.object(torch, "multinomial", multinomial),
    ):
        yield draws


_GEN_FIELDS = frozenset(vars(hf_generation.DiffusionGemmaGenerationConfig()))
_FLOAT_FIELDS = ("confidence_threshold", "t_min", "t_max")


def _generation_kwargs(gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate and coerce generation-config fields (see the module docstring for why)."""
    kwargs = dict(gen_kwargs)
    unknown = sorted(set(kwargs) - _GEN_FIELDS - {"entropy_bound"})
    if unknown:
        raise TypeError(
            f"not DiffusionGemma generation-config fields (generate() would ignore them): {unknown}"
        )
    if "entropy_bound" in kwargs:
        if "sampler_config" in kwargs:
            raise TypeError("pass entropy_bound or sampler_config, not both")
        kwargs["sampler_config"] = {"entropy_bound": kwargs.pop("entropy_bound")}
    sampler = kwargs.get("sampler_config")
    if isinstance(sampler, dict):
        sampler = {k: v for k, v in sampler.items() if k != "_cls_name"}
        kwargs["sampler_config"] = hf_generation.EntropyBoundSamplerConfig(float(sampler["entropy_bound"]))
    for key in _FLOAT_FIELDS:
        if isinstance(kwargs.get(key), int) and not isinstance(kwargs[key], bool):
            kwargs[key] = float(kwargs[key])
    return kwargs


def reference_generate(
    path: str | Path,
    input_ids: np.ndarray,
    noise: int | Sequence[tuple[str, np.ndarray]],
    *,
    attention_mask: np.ndarray | None = None,
    dtype: str = "float32",
    **gen_kwargs: Any,
) -> dict[str, Any]:
    """Run the reference `generate()` with its randomness taken from a noise tape.

    `noise` is either a seed (draws made on demand from `NumpyNoise(seed)` and recorded, so the
    result's "draws" replay exactly through `dgemma_mlx.noise.TapeNoise`) or a tape of
    ("C", int [B, L]) / ("S", float32 [B*L, V]) draws to replay, e.g. one our sampler recorded; every
    draw is checked for kind and shape, and trailing unused draws are allowed (see "draws_used").
    `gen_kwargs` are generation-config fields (plus the shortcut `entropy_bound`).

    Returns "sequences" (int64 [B, P + k*L]), "tokens_per_forward" (float32 [B]), "draws_used",
    "draws" (the draws consumed, in order) and "kinds" (their kinds as a string, e.g. "CSCSC").
    """
    model = load_reference(path, dtype)
    kwargs = _generation_kwargs(gen_kwargs)
    if attention_mask is not None:
        kwargs["attention_mask"] = _tensor(attention_mask)
    with torch.no_grad(), replayed_noise(noise) as draws:
        out = model.generate(_tensor(input_ids), return_dict_in_generate=True, **kwargs)
    assert isinstance(out, hf_generation.DiffusionGemmaGenerationOutput), type(out)
    return {
        "sequences": out.sequences.numpy().astype(np.int64),
        "tokens_per_forward": out.tokens_per_forward.float().numpy(),
        "draws_used": len(draws.used),
        "draws": draws.used,
        "kinds": "".join(kind for kind, _ in draws.used),
    }


# --- quantization parity --------------------------------------------------------------------------------


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors


def dequantized_to_hf(path_out: str | Path, weights: dict[str, np.ndarray], like: str | Path) -> Path:
    """Write float32 weights under HF names as a checkpoint `load_reference` can run.

    `weights` must hold exactly the text tensors `like` stores, with the same shapes; vision-tower
    tensors (which the MLX side drops) may be left out and are copied from `like`. Configs are copied
    from `like` (config dtype set to float32, which is what the file holds).
    """
    path_out, like = Path(path_out), Path(like)
    stored = _read_checkpoint(like)
    missing = sorted(k for k in stored if k not in weights and "vision" not in k)
    extra = sorted(k for k in weights if k not in stored)
    if missing or extra:
        raise KeyError(
            f"key sets differ from {like}: {len(missing)} missing {missing[:5]}, "
            f"{len(extra)} unexpected {extra[:5]}"
        )
    wrong = [(k, weights[k].shape, tuple(v.shape)) for k, v in stored.items() if k in weights]
    wrong = [w for w in wrong if tuple(w[1]) != w[2]]
    if wrong:
        raise ValueError(f"shapes differ from {like} (key, given, stored): {wrong[:5]}")
    tensors = {
        k: torch.from_numpy(np.ascontiguousarray(weights[k], dtype=np.float32))
        if k in weights
        else v.float().contiguous()
        for k, v in stored.items()
    }
    path_out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path_out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((like / "config.json").read_text())
    config["dtype"] = "float32"
    (path_out / "config.json").write_text(json.dumps(config, indent=2))
    (path_out / "generation_config.json").write_text((like / "generation_config.json").read_text())
    return path_out
