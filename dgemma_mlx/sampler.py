"""The entropy-bound sampler's maths, as pure MLX functions on device arrays.

docs/ARCHITECTURE.md, "The sampler", states each rule and the reference function it was checked against.

Kept apart from the loop in `engine.py` so each rule can be tested on hand-made numbers and so the
hot path stays free of host round trips.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import mlx.core as mx
import numpy as np


def temperature(step: int, max_steps: int, t_min: float, t_max: float) -> float:
    """Linear schedule with `step` counting down from N to 1, in float32 as the reference computes it.

    t_min itself is never reached: the last possible pass uses t_min + (t_max - t_min) / N.
    """
    ratio = np.float32(step) / np.float32(max_steps)
    return float(np.float32(t_min) + np.float32(t_max - t_min) * ratio)


class Scores(NamedTuple):
    """What a pass takes from its [B, L, V] logits; all but `z` and `probs` are [B, L]."""

    z: mx.array  # tempered logits, raw / T
    probs: mx.array  # softmax(z), float32: the self-conditioning input of the next pass
    entropy: mx.array  # of softmax(z), in nats
    sample: mx.array  # int32 categorical sample
    draft: mx.array  # int32 argmax(z)
    confidence: mx.array  # probability of the draft


@partial(mx.compile, shapeless=True)
def _entropy(probs: mx.array, z: mx.array, lse: mx.array) -> mx.array:
    """-sum p * (z - lse): compiled so the element-wise product is one fused sweep (no temporaries)."""
    return -(probs * (z - lse)).sum(axis=-1)


def _scores(raw: mx.array, temp: mx.array):
    """Everything a pass needs from [B, L, V] but the sample, around one softmax.

    The softmax is the only transcendental sweep over the vocabulary, and its result is shared: the
    draft's probability gives the log-normaliser (lse = z_draft - log p_draft), entropy is
    -sum p * (z - lse) (accurate when the entropy is tiny), and the probabilities themselves are the
    next pass's self-conditioning input (the model would otherwise compute the same softmax again).

    Only the entropy's element-wise part is compiled: compiling the whole function (softmax, argmax,
    cumsum included) made it ~20% slower on MLX's CPU backend, with bit-identical results either way
    (docs/ARCHITECTURE.md, "The sampler").
    """
    z = raw / temp
    probs = mx.softmax(z, axis=-1)
    draft = mx.argmax(z, axis=-1).astype(mx.int32)
    confidence = mx.take_along_axis(probs, draft[..., None], axis=-1)
    lse = mx.take_along_axis(z, draft[..., None], axis=-1) - mx.log(confidence)
    return z, probs, _entropy(probs, z, lse), draft, confidence[..., 0]


def _scores_gumbel(raw: mx.array, temp: mx.array, gumbel: mx.array):
    z, probs, entropy, draft, confidence = _scores(raw, temp)
    sample = mx.argmax(z + gumbel, axis=-1).astype(mx.int32)  # = argmax(log p + g): lse is per row
    return z, probs, entropy, sample, draft, confidence


def _scores_uniform(raw: mx.array, temp: mx.array, uniform: mx.array):
    z, probs, entropy, draft, confidence = _scores(raw, temp)
    # Inverse CDF: the sample is the first id whose cumulative mass reaches t = u * total, i.e. the
    # count of ids below t. t is scaled by the cumsum's own last entry (the total as the scan summed
    # it; a slice, not another sweep), so that entry is never below t and the id stays in range; u is
    # kept above 0 so an id of zero mass is never chosen.
    cdf = mx.cumsum(probs, axis=-1)
    threshold = mx.maximum(uniform, 1e-30)[..., None] * cdf[..., -1:]
    sample = (cdf < threshold).sum(axis=-1).astype(mx.int32)
    return z, probs, entropy, sample, draft, confidence


def tempered_scores(raw: mx.array, temp: mx.array, sample_noise: mx.array) -> Scores:
    """The pass's scores at temperature `temp` (see `Scores`).

    `sample_noise` is one uniform per position [B, L] (inverse-CDF sampling: no per-vocabulary draw)
    or Gumbel noise [B, L, V] (the reference's Gumbel-max formula, replayed from a tape); see noise.py.
    """
    if sample_noise.ndim == raw.ndim:
        return Scores(*_scores_gumbel(raw, temp, sample_noise))
    return Scores(*_scores_uniform(raw, temp, sample_noise))


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
