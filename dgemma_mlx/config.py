"""Reading a DiffusionGemma `config.json` into the geometry the MLX model is built from.

The released file and what transformers' `save_pretrained` writes today serialise per-layer attention
geometry differently (docs/ARCHITECTURE.md, "Configuration"), and most keys have defaults that the
reference fills in silently. We resolve all of that once, here, so the model code only sees concrete
numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DGemmaError
from .jsonfile import read_json_object

MODEL_TYPE = "diffusion_gemma"
SLIDING = "sliding_attention"
FULL = "full_attention"

# DiffusionGemmaTextConfig defaults (transformers 5.23), used when a key is absent.
TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_144,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 30,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
    "sliding_window": 512,
    "final_logit_softcapping": 30.0,
    "attention_bias": False,
    "use_bidirectional_attention": None,
}
# The text geometry of the published google/diffusiongemma-26B-A4B-it (layer types come from the
# defaults: every sixth layer full attention). Memory benchmarks and the real-geometry tests build the
# released shapes from it without the checkpoint.
RELEASED_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 262_144,
    "hidden_size": 2816,
    "intermediate_size": 2112,
    "moe_intermediate_size": 704,
    "num_hidden_layers": 30,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "global_head_dim": 512,
    "num_global_key_value_heads": 2,
    "num_experts": 128,
    "top_k_experts": 8,
    "sliding_window": 1024,
    "max_position_embeddings": 262_144,
    "use_bidirectional_attention": "vision",
}
# No usable default: DiffusionGemma is always a MoE model.
TEXT_REQUIRED = ("num_experts", "top_k_experts", "moe_intermediate_size")
DEFAULT_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
}
SUPPORTED_ACTIVATIONS = {"gelu_pytorch_tanh", "gelu_tanh", "gelu_approx"}


@dataclass(frozen=True)
class TextConfig:
    """Concrete text-path geometry with every default resolved."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_experts: int
    top_k_experts: int
    layer_types: tuple[str, ...]
    head_dims: tuple[int, ...]
    kv_heads: tuple[int, ...]
    sliding_window: int
    rms_norm_eps: float
    final_logit_softcapping: float | None
    rope_parameters: dict[str, dict[str, Any]]
    max_position_embeddings: int
    pad_token_id: int | None
    bos_token_id: int | None
    eos_token_id: tuple[int, ...]

    @property
    def full_layers(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.layer_types) if t == FULL)


@dataclass(frozen=True)
class ModelConfig:
    """Top-level config: the text geometry plus canvas length and any MLX quantization map."""

    text: TextConfig
    canvas_length: int
    dtype: str | None
    quantization: dict[str, Any] | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        model_type = raw.get("model_type")
        if model_type != MODEL_TYPE:
            raise DGemmaError(
                f"{source}: unsupported model_type {model_type!r} (dgemma-mlx runs {MODEL_TYPE!r} models)"
            )
        text = raw.get("text_config")
        if not isinstance(text, dict):
            raise DGemmaError(f"{source}: missing 'text_config' (not a DiffusionGemma checkpoint?)")
        canvas_length = raw.get("canvas_length", 256)
        if not isinstance(canvas_length, int) or canvas_length <= 0:
            raise DGemmaError(f"{source}: canvas_length must be a positive integer, got {canvas_length!r}")
        if raw.get("tie_word_embeddings", True) is False or text.get("tie_word_embeddings", True) is False:
            raise DGemmaError(f"{source}: untied word embeddings are not supported by DiffusionGemma")
        try:
            text_config = _parse_text_config(text, source)
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type, hand-edited
            raise DGemmaError(f"{source}: invalid text_config ({e})") from None
        return cls(
            text=text_config,
            canvas_length=canvas_length,
            dtype=raw.get("dtype") or raw.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype"),
            quantization=raw.get("quantization"),
            raw=raw,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        raw = read_json_object(path, missing="not found (a model directory needs config.json)")
        return cls.from_dict(raw, source=str(path))


def _count(t: dict[str, Any], key: str, source: str) -> int:
    """A size from text_config: a positive integer, or a one-line error naming the key (never a
    ValueError from int() on a hand-edited config)."""
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DGemmaError(f"{source}: text_config.{key} must be a positive integer, got {value!r}")
    return value


def _positive(t: dict[str, Any], key: str, source: str) -> float:
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise DGemmaError(f"{source}: text_config.{key} must be a positive number, got {value!r}")
    return float(value)


def _parse_text_config(text: dict[str, Any], source: str) -> TextConfig:
    missing = [k for k in TEXT_REQUIRED if text.get(k) is None]
    if missing:
        raise DGemmaError(f"{source}: text_config is missing {', '.join(missing)}")
    t = {**TEXT_DEFAULTS, **{k: v for k, v in text.items() if v is not None or k in TEXT_DEFAULTS}}
    for key in TEXT_DEFAULTS:  # explicit nulls fall back to the default, as in the reference
        if t.get(key) is None and TEXT_DEFAULTS[key] is not None:
            t[key] = TEXT_DEFAULTS[key]

    if t["use_bidirectional_attention"] == "all":
        raise DGemmaError(
            f"{source}: use_bidirectional_attention='all' is not supported (text path is causal)"
        )
    if t["hidden_activation"] not in SUPPORTED_ACTIVATIONS:
        raise DGemmaError(f"{source}: unsupported hidden_activation {t['hidden_activation']!r}")
    if t["attention_bias"]:
        raise DGemmaError(f"{source}: attention_bias=true is not supported")

    n_layers = _count(t, "num_hidden_layers", source)
    layer_types = t.get("layer_types") or []
    if not isinstance(layer_types, list) or not all(isinstance(x, str) for x in layer_types):
        raise DGemmaError(f"{source}: text_config.layer_types must be a list of layer type names")
    layer_types = list(layer_types)
    if not layer_types:
        layer_types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(n_layers)]
    if len(layer_types) != n_layers:
        raise DGemmaError(f"{source}: layer_types has {len(layer_types)} entries for {n_layers} layers")
    if unknown := sorted(set(layer_types) - {SLIDING, FULL}):
        raise DGemmaError(f"{source}: unknown layer type(s) {unknown}")
    layer_types[-1] = FULL  # the reference forces this even when layer_types is explicit

    head_dims, kv_heads = _per_layer_geometry(t, layer_types, source)
    n_heads = _count(t, "num_attention_heads", source)
    for i, k in enumerate(kv_heads):
        if k <= 0 or n_heads % k:
            raise DGemmaError(
                f"{source}: layer {i} has {k} KV heads, which must divide {n_heads} query heads"
            )

    rope_given = t.get("rope_parameters") or {}
    if not isinstance(rope_given, dict) or not all(isinstance(v, dict) for v in rope_given.values()):
        raise DGemmaError(f"{source}: text_config.rope_parameters must map layer types to objects")
    rope = {**DEFAULT_ROPE, **rope_given}
    eos = t["eos_token_id"]
    eos_ids = tuple(eos) if isinstance(eos, list | tuple) else ((eos,) if eos is not None else ())
    if _count(t, "top_k_experts", source) > _count(t, "num_experts", source):
        raise DGemmaError(f"{source}: top_k_experts exceeds num_experts")
    return TextConfig(
        vocab_size=_count(t, "vocab_size", source),
        hidden_size=_count(t, "hidden_size", source),
        intermediate_size=_count(t, "intermediate_size", source),
        moe_intermediate_size=_count(t, "moe_intermediate_size", source),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_experts=_count(t, "num_experts", source),
        top_k_experts=_count(t, "top_k_experts", source),
        layer_types=tuple(layer_types),
        head_dims=tuple(head_dims),
        kv_heads=tuple(kv_heads),
        sliding_window=_count(t, "sliding_window", source),
        rms_norm_eps=_positive(t, "rms_norm_eps", source),
        final_logit_softcapping=t.get("final_logit_softcapping"),
        rope_parameters={k: dict(v) for k, v in rope.items()},
        max_position_embeddings=_count(t, "max_position_embeddings", source),
        pad_token_id=t["pad_token_id"],
        bos_token_id=t["bos_token_id"],
        eos_token_id=eos_ids,
    )


def _per_layer_geometry(
    t: dict[str, Any], layer_types: list[str], source: str
) -> tuple[list[int], list[int]]:
    """Head dim and KV heads per layer, from `per_layer_config` or the older global_* keys
    (docs/ARCHITECTURE.md, "Configuration")."""
    head_dim, kv = int(t["head_dim"]), int(t["num_key_value_heads"])
    head_dims = [head_dim] * len(layer_types)
    kv_heads = [kv] * len(layer_types)
    per_layer = t.get("per_layer_config")
    if per_layer:
        for key, override in per_layer.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise DGemmaError(f"{source}: per_layer_config key {key!r} is not a layer index") from None
            if not 0 <= i < len(layer_types):
                raise DGemmaError(f"{source}: per_layer_config names layer {i}, model has {len(layer_types)}")
            head_dims[i] = int(override.get("head_dim", head_dims[i]))
            kv_heads[i] = int(override.get("num_key_value_heads", kv_heads[i]))
        # The forced-full last layer gets the global geometry even if the file predates the fix.
        last = len(layer_types) - 1
        if str(last) not in per_layer and last not in per_layer:
            head_dims[last] = int(t.get("global_head_dim") or 512)
            if t.get("num_global_key_value_heads") is not None:
                kv_heads[last] = int(t["num_global_key_value_heads"])
    else:
        global_dim = int(t.get("global_head_dim") or 512)
        global_kv = t.get("num_global_key_value_heads")
        for i, lt in enumerate(layer_types):
            if lt == FULL:
                head_dims[i] = global_dim
                if global_kv is not None:
                    kv_heads[i] = int(global_kv)
    return head_dims, kv_heads


def parameter_counts(text: TextConfig) -> dict[str, int]:
    """Text-path parameter counts by group, and the per-token active total (docs/ARCHITECTURE.md,
    "Weights")."""
    H, V, I, Ie, E, K = (
        text.hidden_size,
        text.vocab_size,
        text.intermediate_size,
        text.moe_intermediate_size,
        text.num_experts,
        text.top_k_experts,
    )
    n_h = text.num_attention_heads
    attention = norms = 0
    for lt, d, k in zip(text.layer_types, text.head_dims, text.kv_heads, strict=True):
        q, kk = n_h * d * H, k * d * H
        v = kk if lt == SLIDING else 0
        attention += q + kk + v + H * n_h * d
        norms += 2 * d + 7 * H + 1 + 1  # q/k norms, 7 layer norms, two layer scalars
    L = text.num_hidden_layers
    experts = L * E * 3 * Ie * H
    dense = L * 3 * I * H
    routers = L * (E * H + H + E)
    self_cond = 3 * I * H + H
    embedding = V * H
    norms += H  # final norm
    total = experts + attention + embedding + dense + self_cond + routers + norms
    active = total - experts + L * K * 3 * Ie * H
    return {
        "experts": experts,
        "attention": attention,
        "embedding": embedding,
        "dense_mlp": dense,
        "self_conditioning": self_cond,
        "routers": routers,
        "norms": norms,
        "total": total,
        "active": active,
    }


def estimate_weight_bytes(text: TextConfig, bits: float, other_bits: float | None = None) -> int:
    """Approximate weight bytes at `bits` for experts and `other_bits` (default: same) for the rest.

    Affine quantization with group size 64 stores a 16-bit scale and bias per group, so b-bit weights cost
    b + 0.5 bits each; unquantized tensors (bits >= 16) cost exactly their bits.
    """
    counts = parameter_counts(text)
    other_bits = bits if other_bits is None else other_bits

    def eff(b: float) -> float:
        return b if b >= 16 else b + 0.5

    small = counts["norms"] + counts["routers"] - text.num_hidden_layers * text.num_experts * text.hidden_size
    big_other = counts["total"] - counts["experts"] - small
    return math.ceil((counts["experts"] * eff(bits) + big_other * eff(other_bits) + small * 16) / 8)


def estimate_runtime_bytes(text: TextConfig, canvas_length: int, context: int, batch: int = 1) -> int:
    """Working memory beyond the weights for one denoising pass at `context` cached tokens.

    Dominated by float32 [B, L, V] temporaries in the sampler (logits, tempered logits, log-probs,
    Gumbel noise, probabilities, the bf16 self-conditioning copy: ~6 of them) plus the KV cache.
    """
    logits = 6 * batch * canvas_length * text.vocab_size * 4
    kv = 0
    for lt, d, k in zip(text.layer_types, text.head_dims, text.kv_heads, strict=True):
        tokens = min(context, text.sliding_window - 1) if lt == SLIDING else context
        kv += 2 * batch * k * d * (tokens + canvas_length) * 2
    return logits + kv
