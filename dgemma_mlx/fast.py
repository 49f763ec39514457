"""What each opt-in fast-decoding knob does to a pass (the knobs and presets: `fast_presets.py`).

`engine.denoise_pass` calls these hooks; with every knob off (the default) each one returns its input
unchanged, so the reference sampler runs bit for bit. The knobs:

- `max_passes`: a canvas stops after that many passes: every row is marked done, so the engine's loop
  and the server's scheduler both commit the draft as they do for adaptive stopping.
- `accept_confidence`: positions whose draft probability is >= the threshold are accepted too (the
  entropy-bound set is kept), holding their draft (argmax) token rather than their sample.
- `commit_confidence` / `commit_stability`: a position whose draft repeated for `commit_stability` passes
  with probability >= `commit_confidence` is frozen for the rest of the canvas: its draft, sample and
  next input are held and its entropy counts as zero (as a pinned position's), so it never changes and
  the stop rule sees it as settled. Frozen positions still go through the decoder (the others attend
  to them), so the saving is in passes, not in the cost of a pass.
- `self_conditioning_top_k`: the next pass mixes the embeddings of each position's k most probable
  tokens (their probabilities, not renormalised) instead of the whole vocabulary's: a gather of k rows
  instead of an [L, V] x [V, D] product.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from .generation_config import GenerationConfig
from .model import TopKProbs


# -- self-conditioning ------------------------------------------------------------------------------------
def self_conditioning(
    model: Any, config: GenerationConfig, z: mx.array, probs: mx.array
) -> mx.array | TopKProbs:
    """The next pass's self-conditioning input: the dense probabilities, as the reference, or with
    `self_conditioning_top_k` below the vocabulary their top k (`Model.soft_embed` mixes k rows)."""
    dense = model.self_conditioning_probs(z, probs)
    k = config.self_conditioning_top_k
    if k is None or k >= dense.shape[-1]:
        return dense
    ids = mx.argpartition(-dense, kth=k - 1, axis=-1)[..., :k]
    return TopKProbs(mx.take_along_axis(dense, ids, axis=-1), ids.astype(mx.int32))


# -- acceptance and early commit ---------------------------------------------------------------------------
def hold_frozen(canvas: Any, entropy: mx.array, sample: mx.array, draft: mx.array):
    """Frozen positions keep their committed id as sample and draft, with zero entropy (as pins)."""
    if canvas.frozen is None:
        return entropy, sample, draft
    held = canvas.draft
    frozen = canvas.frozen
    return mx.where(frozen, 0.0, entropy), mx.where(frozen, held, sample), mx.where(frozen, held, draft)


def accept(
    config: GenerationConfig,
    x: mx.array,
    accepted: mx.array,
    draft: mx.array,
    confidence: mx.array,
    canvas: Any,
) -> tuple[mx.array, mx.array]:
    """The next input and the accepted mask after the confidence threshold and frozen positions."""
    threshold = config.accept_confidence
    if threshold is not None:
        confident = confidence >= threshold
        x = mx.where(confident & ~accepted, draft, x)
        accepted = accepted | confident
    if canvas.frozen is not None:
        x = mx.where(canvas.frozen, draft, x)
        accepted = accepted | canvas.frozen
    return x, accepted


def update(
    config: GenerationConfig, canvas: Any, draft: mx.array, confidence: mx.array, done: mx.array
) -> mx.array:
    """After a pass (before `canvas.draft` moves on): freeze what became stable and confident, and
    apply the pass cap. Returns the rows' done flags."""
    threshold = config.commit_confidence
    if threshold is not None:
        repeated = draft == canvas.draft
        streak = canvas.streak if canvas.streak is not None else mx.zeros(draft.shape, dtype=mx.int32)
        streak = mx.where(repeated, streak + 1, 0)
        ready = (streak >= (config.commit_stability or 1)) & (confidence >= threshold)
        frozen = ready if canvas.frozen is None else canvas.frozen | ready
        canvas.streak, canvas.frozen = streak, frozen
    if config.max_passes is not None and canvas.passes >= config.max_passes:
        done = mx.ones_like(done)
    return done
