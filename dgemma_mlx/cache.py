"""The encoder's KV cache: what the decoder reads on every denoising pass.

mlx-lm's `RotatingKVCache` keeps a whole multi-token prefill and rotates its storage on single-token
updates; the decoder needs exactly the last W-1 sliding-layer tokens in temporal order
(docs/ARCHITECTURE.md, "Attention and the cache"), so sliding layers use this small concat-then-trim
cache instead.

Only the encoder writes. Attention asks its cache for "everything to attend over, given these new
keys and values" (`attend`): a `LayerCache` stores the new ones on the way (the encoder's causal
mode), a `ReadOnlyLayerCache` never does (the decoder's bidirectional mode, where each pass over the
same canvas must see the same prompt). Which one a layer gets is the mode; there is no flag.
"""

from __future__ import annotations

import mlx.core as mx


class LayerCache:
    """Post-norm, post-RoPE keys and post-norm values of one layer, [B, kv_heads, T, head_dim]."""

    def __init__(self, keep: int | None = None):
        self.keep = keep  # None: keep everything (full layers); W-1 for sliding layers
        self.keys: mx.array | None = None
        self.values: mx.array | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def attend(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Store the new tokens; return retained-old + new (what the encoder attends over), then trim."""
        if self.keys is not None:
            keys = mx.concatenate([self.keys, keys], axis=2)
            values = mx.concatenate([self.values, values], axis=2)
        stored_k, stored_v = keys, values
        if self.keep is not None and keys.shape[2] > self.keep:
            stored_k = keys[:, :, keys.shape[2] - self.keep :] if self.keep > 0 else keys[:, :, :0]
            stored_v = values[:, :, values.shape[2] - self.keep :] if self.keep > 0 else values[:, :, :0]
        self.keys, self.values = stored_k, stored_v
        return keys, values

    def state(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]

    def read_only(self) -> ReadOnlyLayerCache:
        return ReadOnlyLayerCache(self.keys, self.values)


class ReadOnlyLayerCache:
    """The decoder's view of one layer's cache: it attends over the stored tokens and writes nothing."""

    def __init__(self, keys: mx.array | None, values: mx.array | None):
        self.keys, self.values = keys, values

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def attend(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Stored + new keys and values, [B, kv_heads, T + S, head_dim]; the cache is left as it was."""
        if not self.length:
            return keys, values
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate([self.values, values], axis=2)


class PromptCache:
    """All layers' caches plus the committed token count n and per-row left padding."""

    def __init__(self, layer_keeps: list[int | None], batch_size: int):
        self.layers = [LayerCache(k) for k in layer_keeps]
        self.offset = 0  # n: tokens committed so far = next free absolute position
        self.batch_size = batch_size
        self.left_padding: mx.array | None = None  # [B] count of pad slots at the start of each row

    def state(self) -> list[mx.array]:
        return [a for layer in self.layers for a in layer.state()]

    def copy(self) -> PromptCache:
        """A cheap snapshot: MLX arrays are immutable, so sharing them is safe."""
        new = PromptCache([layer.keep for layer in self.layers], self.batch_size)
        for src, dst in zip(self.layers, new.layers, strict=True):
            dst.keys, dst.values = src.keys, src.values
        new.offset = self.offset
        new.left_padding = self.left_padding
        return new

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state())
