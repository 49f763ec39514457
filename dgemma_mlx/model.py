"""DiffusionGemma's text path in MLX: one layer stack used as causal encoder and bidirectional decoder.

Module names mirror the Hugging Face checkpoint (`model.decoder.*` for the shared weights,
`model.encoder.language_model.layers.{i}.layer_scalar` for the encoder's own scalars), so weight
sanitising is a small rename (docs/ARCHITECTURE.md, "Weights"). mlx-lm's Gemma 4 pieces are reused
where the maths is identical: dense MLP, expert SwitchGLU, proportional RoPE, soft-cap
(docs/ARCHITECTURE.md, "Reuse of mlx-lm").
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma4_text
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.rope_utils import initialize_rope

from .cache import LayerCache, PromptCache, ReadOnlyLayerCache
from .config import FULL, SLIDING, ModelConfig, TextConfig
from .layout import to_tree

# What a layer attends with: the encoder's writable cache or the decoder's read-only view (the mode).
AttentionCache = LayerCache | ReadOnlyLayerCache
Mask = mx.array | str | None  # "causal", a boolean array, or None (the decoder: no mask)


class TopKProbs(NamedTuple):
    """Self-conditioning from each position's k most probable tokens only (opt-in fast decoding,
    fast.py): the mix is a gather of k embedding rows instead of an [L, V] x [V, D] product. The
    probabilities are not renormalised: it is the dense mix with every other probability zeroed."""

    values: mx.array  # [B, L, k] probabilities
    ids: mx.array  # [B, L, k] int32 token ids

    def astype(self, dtype: mx.Dtype) -> TopKProbs:
        return TopKProbs(self.values.astype(dtype), self.ids)


def _mlx_lm_args(text: TextConfig) -> gemma4_text.ModelArgs:
    """The subset of mlx-lm's Gemma 4 arguments its MLP, Router and Experts constructors read."""
    return gemma4_text.ModelArgs(
        hidden_size=text.hidden_size,
        num_hidden_layers=text.num_hidden_layers,
        intermediate_size=text.intermediate_size,
        num_attention_heads=text.num_attention_heads,
        rms_norm_eps=text.rms_norm_eps,
        vocab_size=text.vocab_size,
        num_kv_shared_layers=0,
        hidden_size_per_layer_input=0,
        use_double_wide_mlp=False,
        enable_moe_block=True,
        num_experts=text.num_experts,
        top_k_experts=text.top_k_experts,
        moe_intermediate_size=text.moe_intermediate_size,
        layer_types=list(text.layer_types),
    )


def rms_norm_no_scale(x: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x, None, eps)


class Attention(nn.Module):
    """Gemma 4 attention with scale 1, q/k norms, and K=V on full layers.

    Unlike mlx-lm's Gemma 4 attention it takes the RoPE offset and cache from the caller: the encoder
    hands it a writable `LayerCache`, the decoder a `ReadOnlyLayerCache`, so the mode is the cache.
    """

    def __init__(self, text: TextConfig, layer_idx: int):
        super().__init__()
        self.is_sliding = text.layer_types[layer_idx] == SLIDING
        self.head_dim = text.head_dims[layer_idx]
        self.n_heads = text.num_attention_heads
        self.n_kv_heads = text.kv_heads[layer_idx]
        self.eps = text.rms_norm_eps
        H = text.hidden_size
        self.q_proj = nn.Linear(H, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(H, self.n_kv_heads * self.head_dim, bias=False)
        if self.is_sliding:
            self.v_proj = nn.Linear(H, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, H, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=self.eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=self.eps)
        rope_params = text.rope_parameters[SLIDING if self.is_sliding else FULL]
        self.rope = initialize_rope(
            dims=self.head_dim,
            traditional=False,
            base=rope_params.get("rope_theta", 10_000.0),
            scaling_config=rope_params,
            max_position_embeddings=text.max_position_embeddings,
        )

    def keys_values(self, x: mx.array, offset: int) -> tuple[mx.array, mx.array]:
        """Post-norm, post-RoPE keys and post-norm values, [B, kv_heads, S, head_dim]."""
        B, S, _ = x.shape
        raw_k = self.k_proj(x).reshape(B, S, self.n_kv_heads, self.head_dim)
        raw_v = self.v_proj(x).reshape(B, S, self.n_kv_heads, self.head_dim) if self.is_sliding else raw_k
        keys = self.rope(self.k_norm(raw_k).transpose(0, 2, 1, 3), offset=offset)
        values = rms_norm_no_scale(raw_v, self.eps).transpose(0, 2, 1, 3)
        return keys, values

    def __call__(self, x: mx.array, cache: AttentionCache, offset: int, mask: Mask) -> mx.array:
        B, S, _ = x.shape
        queries = self.q_proj(x).reshape(B, S, self.n_heads, self.head_dim)
        queries = self.rope(self.q_norm(queries).transpose(0, 2, 1, 3), offset=offset)
        keys, values = cache.attend(*self.keys_values(x, offset))
        out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=1.0, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, S, -1))


class Router(gemma4_text.Router):
    """mlx-lm's router with the reference's precision: full softmax in float32, scalar applied in float32.

    mlx-lm casts H^-1/2 to bf16 first (-0.24%), which can flip near-tie expert choices (docs/ARCHITECTURE.md,
    "A layer").
    """

    def __call__(self, x: mx.array) -> tuple[mx.array, mx.array]:
        dtype = x.dtype
        r = rms_norm_no_scale(x, self.eps) * self.scale
        r = (r.astype(mx.float32) * self._root_size).astype(dtype)
        probs = mx.softmax(self.proj(r).astype(mx.float32), axis=-1)
        k = self.config.top_k_experts
        indices = mx.stop_gradient(mx.argpartition(-probs, kth=k - 1, axis=-1)[..., :k])
        weights = mx.take_along_axis(probs, indices, axis=-1)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        return indices, weights * self.per_expert_scale[indices].astype(mx.float32)


class DecoderLayer(nn.Module):
    """One Gemma 4 MoE layer; `layer_scalar` here is the decoder's, the encoder's lives elsewhere."""

    def __init__(self, text: TextConfig, layer_idx: int):
        super().__init__()
        args = _mlx_lm_args(text)
        H, eps = text.hidden_size, text.rms_norm_eps
        self.self_attn = Attention(text, layer_idx)
        self.mlp = gemma4_text.MLP(args, layer_idx)
        self.router = Router(args)
        self.experts = gemma4_text.Experts(args)
        self.input_layernorm = nn.RMSNorm(H, eps=eps)
        self.post_attention_layernorm = nn.RMSNorm(H, eps=eps)
        self.pre_feedforward_layernorm = nn.RMSNorm(H, eps=eps)
        self.post_feedforward_layernorm = nn.RMSNorm(H, eps=eps)
        self.pre_feedforward_layernorm_2 = nn.RMSNorm(H, eps=eps)
        self.post_feedforward_layernorm_1 = nn.RMSNorm(H, eps=eps)
        self.post_feedforward_layernorm_2 = nn.RMSNorm(H, eps=eps)
        self.layer_scalar = mx.ones((1,))

    def __call__(
        self, x: mx.array, cache: AttentionCache, offset: int, mask: Mask, scalar: mx.array
    ) -> mx.array:
        h = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cache, offset, mask))
        dense = self.post_feedforward_layernorm_1(self.mlp(self.pre_feedforward_layernorm(h)))
        indices, weights = self.router(h)
        expert_out = self.experts.switch_glu(self.pre_feedforward_layernorm_2(h), indices)
        moe = (expert_out * weights[..., None]).astype(h.dtype).sum(axis=-2)
        moe = self.post_feedforward_layernorm_2(moe)
        return (h + self.post_feedforward_layernorm(dense + moe)) * scalar


class SelfConditioning(gemma4_text.MLP):
    """Feeds the previous pass's soft prediction back into the canvas embedding (docs/ARCHITECTURE.md,
    "Self-conditioning")."""

    def __init__(self, text: TextConfig):
        super().__init__(_mlx_lm_args(text))
        self.pre_norm = nn.RMSNorm(text.hidden_size, eps=text.rms_norm_eps)
        self.eps = text.rms_norm_eps

    def __call__(self, embeds: mx.array, soft_embeds: mx.array) -> mx.array:
        signal = super().__call__(self.pre_norm(soft_embeds))
        return rms_norm_no_scale(embeds + signal, self.eps)


class TextStack(nn.Module):
    """The shared weights: embedding (also the LM head), layers, final norm, self-conditioning."""

    def __init__(self, text: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size)
        self.layers = [DecoderLayer(text, i) for i in range(text.num_hidden_layers)]
        self.norm = nn.RMSNorm(text.hidden_size, eps=text.rms_norm_eps)
        self.self_conditioning = SelfConditioning(text)


class ScalarOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_scalar = mx.ones((1,))


class EncoderScalars(nn.Module):
    """The only encoder-specific tensors: one layer scalar per layer (buffers are not tied,
    docs/ARCHITECTURE.md, "Weights")."""

    def __init__(self, text: TextConfig):
        super().__init__()
        self.language_model = nn.Module()
        self.language_model.layers = [ScalarOnly() for _ in range(text.num_hidden_layers)]


class DiffusionGemmaModel(nn.Module):
    def __init__(self, text: TextConfig):
        super().__init__()
        self.decoder = TextStack(text)
        self.encoder = EncoderScalars(text)


class Model(nn.Module):
    """DiffusionGemma text model: `encode` writes the prompt cache, `decode` runs one denoising pass."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.text = config.text
        self.model = DiffusionGemmaModel(config.text)
        self.embed_scale = config.text.hidden_size**0.5

    # -- shape helpers -------------------------------------------------------------------------------
    @property
    def layers(self) -> list[DecoderLayer]:
        return self.model.decoder.layers

    @property
    def dtype(self) -> mx.Dtype:
        """The activation dtype: that of the (never quantized) final norm weight."""
        return self.model.decoder.norm.weight.dtype

    @property
    def canvas_length(self) -> int:
        return self.config.canvas_length

    @property
    def vocab_size(self) -> int:
        return self.text.vocab_size

    def make_cache(self, batch_size: int) -> PromptCache:
        keeps = [self.text.sliding_window - 1 if t == SLIDING else None for t in self.text.layer_types]
        return PromptCache(keeps, batch_size)

    # -- masks ---------------------------------------------------------------------------------------
    def _encoder_mask(self, S: int, cached: int, first_pos: int, window: int | None, cache: PromptCache):
        """Causal (windowed on sliding layers) mask over [cached old keys, S new keys].

        With left padding, padded key positions are masked too; a query may always see itself so that
        padded rows stay finite (their outputs are never read).
        """
        if cache.left_padding is None:
            if cached == 0 and (window is None or S <= window):
                return "causal"
            return create_causal_mask(S, offset=cached, window_size=window)
        mask = create_causal_mask(S, offset=cached, window_size=window)
        key_pos = mx.arange(cached + S) + first_pos
        valid = key_pos[None, :] >= cache.left_padding[:, None]  # [B, T]
        self_key = mx.arange(cached + S)[None, :] == mx.arange(cached, cached + S)[:, None]
        return ((mask[None] & valid[:, None, :]) | self_key[None])[:, None]

    def _decoder_mask(self, L: int, cached: int, first_pos: int, cache: PromptCache):
        if cache.left_padding is None:
            return None
        key_pos = mx.arange(cached + L) + first_pos
        valid = (key_pos[None, :] >= cache.left_padding[:, None]) | (mx.arange(cached + L) >= cached)[None]
        return valid[:, None, None, :]

    # -- the two modes -------------------------------------------------------------------------------
    def embed(self, ids: mx.array) -> mx.array:
        return self.model.decoder.embed_tokens(ids) * self.embed_scale

    def encode(self, ids: mx.array, cache: PromptCache) -> None:
        """Causal pass over clean tokens at positions [n, n+S): extends the cache, returns nothing.

        The last layer's K/V is all the cache needs from it, so its attention and FFN are skipped, as is
        the final norm (docs/ARCHITECTURE.md, "Attention and the cache").
        """
        B, S = ids.shape
        n = cache.offset
        h = self.embed(ids)
        masks = {}
        for t in (SLIDING, FULL):
            idx = next((i for i, lt in enumerate(self.text.layer_types) if lt == t), None)
            if idx is None:
                continue
            cached = cache.layers[idx].length
            window = self.text.sliding_window if t == SLIDING else None
            masks[t] = self._encoder_mask(S, cached, n - cached, window, cache)
        scalars = self.model.encoder.language_model.layers
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last:
                keys, values = layer.self_attn.keys_values(layer.input_layernorm(h), n)
                cache.layers[i].attend(keys, values)
                break
            h = layer(h, cache.layers[i], n, masks[self.text.layer_types[i]], scalars[i].layer_scalar)
        cache.offset = n + S

    def soft_embed(self, probs: mx.array | TopKProbs) -> mx.array:
        """probs @ E, straight from the quantized table when the embedding is quantized
        (docs/ARCHITECTURE.md, "Self-conditioning"); for `TopKProbs` the weighted sum of k rows."""
        emb = self.model.decoder.embed_tokens
        if isinstance(probs, TopKProbs):
            rows = emb(probs.ids).astype(probs.values.dtype)  # [B, L, k, D], quantized tables included
            return (probs.values[..., None] * rows).sum(axis=-2)
        if isinstance(emb, nn.QuantizedEmbedding):
            return mx.quantized_matmul(
                probs,
                emb.weight,
                emb.scales,
                emb.get("biases"),
                transpose=False,
                group_size=emb.group_size,
                bits=emb.bits,
                mode=emb.mode,
            )
        return probs @ emb.weight

    def self_conditioning_probs(self, z: mx.array, probs: mx.array) -> mx.array:
        """The soft-embedding weights for the next pass, from this pass's tempered logits `z` and the
        sampler's float32 softmax(z) `probs`.

        The reference casts z to the model dtype, then takes a float32 softmax: in a float32 model that
        is exactly `probs`, so it is reused (one [B, L, V] softmax less per pass); otherwise the
        rounding of z to the model dtype is honoured and the softmax taken again.
        """
        if self.dtype == mx.float32:
            return probs
        return mx.softmax(z.astype(self.dtype).astype(mx.float32), axis=-1).astype(self.dtype)

    def decode(
        self,
        canvas: mx.array,
        cache: PromptCache,
        self_conditioning_logits: mx.array | None = None,
        *,
        self_conditioning_probs: mx.array | TopKProbs | None = None,
    ) -> mx.array:
        """One bidirectional pass over the canvas at positions [n, n+L); float32 soft-capped logits.

        Self-conditioning enters as a probability-weighted mix of embeddings: give either the previous
        pass's temperature-scaled logits cast to the model dtype (`self_conditioning_logits`, the
        reference's interface) or the probabilities themselves (`self_conditioning_probs`, from
        `self_conditioning_probs()`, which is what the engine does, or their top k as `TopKProbs`).
        """
        B, L = canvas.shape
        n = cache.offset
        probs = self_conditioning_probs
        if probs is None and self_conditioning_logits is not None:
            probs = mx.softmax(self_conditioning_logits.astype(mx.float32), axis=-1)
        x = self.decoder_input(canvas, probs)
        masks = {}
        for i, layer in enumerate(self.layers):
            t = self.text.layer_types[i]
            if t not in masks:
                cached = cache.layers[i].length
                masks[t] = self._decoder_mask(L, cached, n - cached, cache)
            x = layer(x, cache.layers[i].read_only(), n, masks[t], layer.layer_scalar)
        return self.head(x)

    def decoder_input(self, canvas: mx.array, probs: mx.array | TopKProbs | None) -> mx.array:
        """The canvas embedded, with the previous pass's self-conditioning when there is one."""
        x = self.embed(canvas)
        if probs is None:
            return rms_norm_no_scale(x, self.text.rms_norm_eps)
        soft = self.soft_embed(probs.astype(x.dtype)) * self.embed_scale
        return self.model.decoder.self_conditioning(x, soft)

    def head(self, x: mx.array) -> mx.array:
        """Final norm, the tied head, the soft-cap: float32 logits."""
        decoder = self.model.decoder
        logits = decoder.embed_tokens.as_linear(decoder.norm(x)).astype(mx.float32)
        cap = self.text.final_logit_softcapping
        return gemma4_text.logit_softcap(cap, logits) if cap else logits

    # -- weights -------------------------------------------------------------------------------------
    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]:
        """Checkpoint names (public/HF layout, or our older MLX names) -> this module tree
        (docs/ARCHITECTURE.md, "Weights"; the mapping itself is `layout.to_tree`)."""
        return to_tree(weights)[0]
