"""The models `dgemma bench` runs: random weights at a geometry, a checkpoint at a chosen precision, and
mlx-lm's autoregressive Gemma 4 at the same geometry sharing those weights.

Random weights are written tensor by tensor, quantized ones chunk by chunk, straight into the module
tree the precision asks for: the float32 model is never materialised (at the released geometry the
embedding alone is 2.9 GB in float32, the whole model ~100 GB), so a 4-bit benchmark needs about the
memory of the 4-bit model. The autoregressive twin reuses the same arrays (no copy), which is what
makes "break-even tokens per pass" compare like with like: same weights, same precision, same device.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models import gemma4_text

from .config import FULL, SLIDING, ModelConfig, TextConfig
from .errors import DGemmaError
from .geometry import STORED, Precision
from .model import Model
from .quantization import quantize_model

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
# Values generated (and quantized) at once: bounds the transient memory of building a quantized weight
# to ~128 MB of float32, whatever the tensor's size.
CHUNK_VALUES = 1 << 25


def _uniform(shape: tuple[int, ...], dtype: mx.Dtype, key: mx.array) -> mx.array:
    """U(-a, a) with a = in_dim^-1/2 (nn.Linear's own init): activations keep their scale through a
    random stack, so logits stay finite and the engine's first-pass check passes."""
    bound = shape[-1] ** -0.5
    return mx.random.uniform(-bound, bound, shape, dtype=dtype, key=key)


def _chunks(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    rows = shape[0]
    step = max(1, CHUNK_VALUES // max(1, math.prod(shape[1:])))
    return [(start, min(step, rows - start)) for start in range(0, rows, step)]


def _random_float(shape: tuple[int, ...], dtype: mx.Dtype, key: mx.array) -> mx.array:
    w = _uniform(shape, dtype, key)
    mx.eval(w)
    return w


def _random_quantized(module: nn.Module, dtype: mx.Dtype, key: mx.array) -> None:
    """Fill a quantized module (Linear, Embedding, SwitchLinear) with quantized random weights, one
    chunk of output rows at a time; only the packed result stays."""
    packed = module.weight.shape
    shape = (*packed[:-1], packed[-1] * 32 // module.bits)
    chunks = _chunks(shape)
    keys = mx.random.split(key, len(chunks))
    parts = []
    for (_, rows), k in zip(chunks, keys, strict=True):
        values = _uniform((rows, *shape[1:]), dtype, k)
        q = mx.quantize(values, module.group_size, module.bits, mode=module.mode)
        mx.eval(q)
        parts.append(q)
    names = ("weight", "scales", "biases")[: len(parts[0])]
    for i, name in enumerate(names):
        module[name] = parts[0][i] if len(parts) == 1 else mx.concatenate([p[i] for p in parts])
        mx.eval(module[name])


def is_quantized(model: nn.Module) -> bool:
    return any("scales" in m for _, m in model.named_modules())


def randomize(model: nn.Module, dtype: mx.Dtype, seed: int) -> None:
    """Replace every matrix (Linear, Embedding, experts) with seeded random values, evaluated one tensor
    at a time; norms, scalars and router scales keep their init (ones)."""
    key = mx.random.key(seed)
    for _, module in model.named_modules():
        if "weight" not in module or module["weight"].ndim < 2:
            continue
        key, sub = mx.random.split(key)
        if "scales" in module:
            _random_quantized(module, dtype, sub)
        else:
            module["weight"] = _random_float(module["weight"].shape, dtype, sub)
    mx.eval(model.parameters())


def random_model(config: ModelConfig, precision: Precision, seed: int = 0) -> Model:
    """A DiffusionGemma at `config` with random weights at `precision`, in bounded memory.

    The module tree is built lazily (MLX materialises nothing until evaluated), quantized by the
    precision's recipe while still lazy, then every matrix is replaced by evaluated random values, so
    the lazy float32 initial weights are dropped unevaluated.
    """
    if precision.name == STORED or precision.dtype is None:
        raise DGemmaError("random weights need a precision (float32, bfloat16, 4bit, ...), not 'stored'")
    model = Model(config)
    dtype = DTYPES[precision.dtype]
    if precision.quantized:
        quantize_model(model, precision.bits, precision.group_size, precision.mode, precision.recipe)
    model.set_dtype(dtype)
    randomize(model, dtype, seed)
    return model


def apply_precision(model: Model, precision: Precision, source: str) -> None:
    """Cast or quantize a loaded float checkpoint in place; `stored` leaves it as its files are."""
    if precision.name == STORED:
        return
    if is_quantized(model):
        raise DGemmaError(f"{source} is already quantized: benchmark it with --precision stored")
    model.set_dtype(DTYPES[precision.dtype])  # type: ignore[index]
    if precision.quantized:
        quantize_model(model, precision.bits, precision.group_size, precision.mode, precision.recipe)
    mx.eval(model.parameters())


def weight_bytes(model: nn.Module) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def _first(text: TextConfig, kind: str, values: tuple[int, ...]) -> int | None:
    return next((v for t, v in zip(text.layer_types, values, strict=True) if t == kind), None)


def ar_args(text: TextConfig) -> gemma4_text.ModelArgs:
    """mlx-lm's Gemma 4 arguments for the same text geometry: MoE block, K=V full layers, no per-layer
    inputs, no KV sharing (what DiffusionGemma's layer stack is, run causally)."""
    sliding_dim = _first(text, SLIDING, text.head_dims)
    full_dim = _first(text, FULL, text.head_dims)
    sliding_kv = _first(text, SLIDING, text.kv_heads)
    full_kv = _first(text, FULL, text.kv_heads)
    return gemma4_text.ModelArgs(
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        intermediate_size=text.intermediate_size,
        num_attention_heads=text.num_attention_heads,
        head_dim=sliding_dim or full_dim,
        global_head_dim=full_dim or sliding_dim,
        rms_norm_eps=text.rms_norm_eps,
        vocab_size=text.vocab_size,
        num_key_value_heads=sliding_kv or full_kv,
        num_global_key_value_heads=full_kv,
        num_kv_shared_layers=0,
        hidden_size_per_layer_input=0,
        rope_parameters={k: dict(v) for k, v in text.rope_parameters.items()},
        sliding_window=text.sliding_window,
        max_position_embeddings=text.max_position_embeddings,
        attention_k_eq_v=True,
        final_logit_softcapping=text.final_logit_softcapping,
        use_double_wide_mlp=False,
        enable_moe_block=True,
        num_experts=text.num_experts,
        top_k_experts=text.top_k_experts,
        moe_intermediate_size=text.moe_intermediate_size,
        layer_types=list(text.layer_types),
    )


def autoregressive_twin(model: Model) -> gemma4_text.Model:
    """mlx-lm's `gemma4_text` model holding `model`'s own decoder arrays (no copy): the same weights at
    the same precision, run as an autoregressive LM with mlx-lm's KV cache.

    Modules are quantized exactly where ours are (our path is `model.decoder.` + its path), before the
    arrays are swapped in, so mlx-lm's lazy initial weights are never evaluated.
    """
    twin = gemma4_text.Model(ar_args(model.text))
    ours = {path: m for path, m in model.named_modules() if "scales" in m}

    def same_as_ours(path: str, _: nn.Module) -> dict | bool:
        m = ours.get("model.decoder." + path.removeprefix("model."))
        return {"group_size": m.group_size, "bits": m.bits, "mode": m.mode} if m is not None else False

    nn.quantize(twin, class_predicate=same_as_ours)
    shared = [
        ("model." + path.removeprefix("model.decoder."), value)
        for path, value in tree_flatten(model.parameters())
        if path.startswith("model.decoder.") and not path.startswith("model.decoder.self_conditioning.")
    ]
    try:
        twin.load_weights(shared, strict=True)
    except ValueError as e:
        reason = str(e).splitlines()[0]
        raise DGemmaError(f"mlx-lm's gemma4_text cannot take this geometry ({reason})") from None
    return twin
