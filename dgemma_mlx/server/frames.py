"""Rows of different lengths in one decoder pass, each in its own position frame, exactly.

The server keeps one batch-1 encoder cache per request, encoded exactly as that request alone would
be. To denoise several of them in one forward, their caches are stacked with zero slots on the left
(`stack_caches`) and the decoder runs with one RoPE offset per row (`FramedModel.decode`), so each
row's queries sit at the positions its lone run uses and every key keeps the rotation it was
encoded with. Padded slots are masked out.

Why not the engine's own left padding: it shifts a padded row's absolute positions, and RoPE at other
angles changes its logits by about 3e-5 on the tiny test models (measured), enough to flip a near
tie. Here the rotations are the lone run's own, and a masked slot adds an exact zero to the
attention sums (checked on MLX's CPU path: `tests/test_serve_frames.py`), so a row's logits are
bit-for-bit those of its lone run and a request's output does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx

from ..cache import PromptCache, ReadOnlyLayerCache
from ..model import Model


class FramedLayer:
    """One layer of a `FramedCache`: stacked keys/values [B, kv, width, d] (or none) and the
    count of real slots per row."""

    def __init__(self, keys: mx.array | None, values: mx.array | None, counts: list[int]):
        self.keys, self.values, self.counts = keys, values, counts

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def read_only(self) -> ReadOnlyLayerCache:
        return ReadOnlyLayerCache(self.keys, self.values)

    def mask(self, canvas: int) -> mx.array | None:
        """[B, 1, 1, width + canvas] bool: a row sees its own real slots and the whole canvas."""
        width = self.length
        if all(c == width for c in self.counts):
            return None
        slots = mx.arange(width + canvas)[None, :]
        first_real = mx.array([width - c for c in self.counts], dtype=mx.int32)[:, None]
        return (slots >= first_real)[:, None, None, :]


class FramedCache:
    """Stacked per-row caches, read the way `Model.decode` reads a `PromptCache`: `offset` is one
    position per row (each row's own next position, which RoPE takes per row), `layers[i]` gives
    `length` and `read_only()`."""

    def __init__(self, layers: list[FramedLayer], offsets: list[int]):
        self.layers = layers
        self.offsets = list(offsets)
        self.offset = mx.array(offsets, dtype=mx.int32)
        self.batch_size = len(offsets)
        self.left_padding = True  # not None: makes `Model.decode` ask for masks (see FramedModel)


def _pad_left(a: mx.array, width: int) -> mx.array:
    if a.shape[2] == width:
        return a
    pad = mx.zeros((a.shape[0], a.shape[1], width - a.shape[2], a.shape[3]), dtype=a.dtype)
    return mx.concatenate([pad, a], axis=2)


def stack_caches(caches: Sequence[PromptCache]) -> FramedCache:
    """One `FramedCache` from batch-1 caches of any lengths (each stays as it was)."""
    layers = []
    for i in range(len(caches[0].layers)):
        parts = [c.layers[i] for c in caches]
        counts = [p.length for p in parts]
        width = max(counts)
        if width == 0:
            layers.append(FramedLayer(None, None, counts))
            continue
        template = next(p for p in parts if p.keys is not None)
        keys, values = [], []
        for p in parts:
            keys.append(_pad_left(p.keys if p.keys is not None else template.keys[:, :, :0], width))
            values.append(_pad_left(p.values if p.values is not None else template.values[:, :, :0], width))
        layers.append(FramedLayer(mx.concatenate(keys, axis=0), mx.concatenate(values, axis=0), counts))
    return FramedCache(layers, [c.offset for c in caches])


def take_rows(cache: FramedCache, keep: Sequence[int]) -> FramedCache:
    """The same stack restricted to the rows `keep` (padding is left as it is: still masked)."""
    index = mx.array(list(keep), dtype=mx.int32)
    layers = [
        FramedLayer(
            None if layer.keys is None else layer.keys[index],
            None if layer.values is None else layer.values[index],
            [layer.counts[b] for b in keep],
        )
        for layer in cache.layers
    ]
    return FramedCache(layers, [cache.offsets[b] for b in keep])


class FramedModel:
    """The model as `engine.denoise_pass` sees it, with a `decode` that reads a `FramedCache`.

    The decoder's maths stays `Model.decode`'s own: only the padding mask is answered from the
    stacked cache (per layer kind, by its width), through an instance-level `_decoder_mask` held for
    the call. The model thread is the only caller, so nothing else sees the override. If
    `Model.decode` ever stops asking for masks, the call fails loudly instead of attending to padding.
    Everything else (canvas length, vocabulary, dtype, encode) is the wrapped model's own.
    """

    def __init__(self, model: Model):
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def decode(self, canvas: mx.array, cache: FramedCache, *args: Any, **kwargs: Any) -> mx.array:
        by_width = {layer.length: layer for layer in cache.layers}
        asked: list[int] = []

        def decoder_mask(length: int, cached: int, first_pos: Any, _cache: Any) -> mx.array | None:
            asked.append(cached)
            return by_width[cached].mask(length)

        vars(self.model)["_decoder_mask"] = decoder_mask
        try:
            logits = self.model.decode(canvas, cache, *args, **kwargs)
        finally:
            vars(self.model).pop("_decoder_mask", None)
        if not asked:
            raise RuntimeError("Model.decode no longer asks for decoder masks: FramedModel needs updating")
        return logits
