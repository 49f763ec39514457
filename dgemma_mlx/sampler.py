"""The entropy-bound sampler's maths, as pure MLX functions on device arrays.

docs/ARCHITECTURE.md, "The sampler", states each rule and the reference function it was checked against.

Kept apart from the loop in `engine.py` so each rule can be tested on hand-made numbers and so the
hot path stays free of host round trips.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import numpy as np


def temperature(step: int, max_steps: int, t_min: float, t_max: float) -> float:
    """Linear schedule with `step` counting down from N to 1, in float32 as the reference computes it.

    t_min itself is never reached: the last possible pass uses t_min + (t_max - t_min) / N.
    """
    ratio = np.float32(step) / np.float32(max_steps)
    return float(np.float32(t_min) + np.float32(t_max - t_min) * ratio)


@partial(mx.compile, shapeless=True)
def tempered_scores(raw: mx.array, temp: mx.array, gumbel: mx.array):
    """One fused pass over [B, L, V]: tempered logits, entropy, sample, argmax and its probability.

    Exponentials dominate this step's cost (notably on CPU), so the softmax is computed once and
    shared: entropy as -sum p * (z - lse), which stays accurate when the entropy is tiny. The sample
    is argmax(z + g): the Gumbel-max trick, equal to argmax(log p + g) since lse is constant per row.
    """
    z = raw / temp
    m = mx.max(z, axis=-1, keepdims=True)
    e = mx.exp(z - m)
    s = e.sum(axis=-1, keepdims=True)
    lse = m + mx.log(s)
    ent = -((e / s) * (z - lse)).sum(axis=-1)
    sample = mx.argmax(z + gumbel, axis=-1).astype(mx.int32)
    draft = mx.argmax(z, axis=-1).astype(mx.int32)
    confidence = mx.exp(mx.take_along_axis(z, draft[..., None], axis=-1)[..., 0] - lse[..., 0])
    return z, ent, sample, draft, confidence


def log_probs(logits: mx.array) -> mx.array:
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def entropy(logp: mx.array) -> mx.array:
    """Per-position entropy in nats from log-probabilities."""
    return -(mx.exp(logp) * logp).sum(axis=-1)


def gumbel_sample(logp: mx.array, gumbel: mx.array) -> mx.array:
    """Categorical sample as argmax(log p + g): the Gumbel-max trick, the formula a reference tape replays."""
    return mx.argmax(logp + gumbel, axis=-1).astype(mx.int32)


def accept_by_entropy(ent: mx.array, bound: float) -> mx.array:
    """Accept the lowest-entropy positions while the entropy already accepted stays within `bound`.

    Position of rank k is accepted iff the sum of the k-1 smaller entropies is <= bound, so the most
    certain position is always accepted and the accepted set is a prefix of the sorted order.
    """
    order = mx.argsort(ent, axis=-1)
    sorted_ent = mx.take_along_axis(ent, order, axis=-1)
    keep_sorted = (mx.cumsum(sorted_ent, axis=-1) - sorted_ent) <= bound
    return mx.take_along_axis(keep_sorted, mx.argsort(order, axis=-1), axis=-1)


def pad_after_eos(tokens: mx.array, eos_ids: mx.array, pad_id: int) -> mx.array:
    """Replace tokens strictly after a row's first EOS with pad; the first EOS itself stays."""
    is_eos = mx.any(tokens[..., None] == eos_ids, axis=-1)
    seen = mx.cumsum(is_eos.astype(mx.int32), axis=-1)
    pad_mask = (seen > 0) & ~((seen == 1) & is_eos)
    return mx.where(pad_mask, mx.array(pad_id, dtype=tokens.dtype), tokens)


class StopRule:
    """Adaptive stopping: a row stops denoising once its draft is stable and its passes are confident.

    Stable: the draft equals each of the last `stability_threshold` drafts (0: always stable).
    Confident: the mean per-position entropy of the tempered logits is below `confidence_threshold`.
    The history starts as -1 drafts, so a row can stop on the (threshold + 1)-th pass at the earliest.
    Checked against transformers' `StableAndConfidentStoppingCriteria`; one instance per canvas.
    """

    def __init__(self, stability_threshold: int, confidence_threshold: float, batch: int, length: int):
        self.confidence_threshold = confidence_threshold
        self.history = [mx.full((batch, length), -1, dtype=mx.int32)] * stability_threshold

    def __call__(self, draft: mx.array, entropy: mx.array) -> mx.array:
        """[B] bool: rows that may stop after this pass's `draft` [B, L] and `entropy` [B, L]."""
        stable = mx.ones((draft.shape[0],), dtype=mx.bool_)
        for past in self.history:
            stable = stable & mx.all(past == draft, axis=-1)
        if self.history:
            self.history = self.history[1:] + [draft]
        return stable & (entropy.mean(axis=-1) < self.confidence_threshold)
