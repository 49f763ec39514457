"""The training loss: the model's own recipe, with optional self-conditioning chains and rollouts.

The puzzle is the prompt (encoded causally into the cache, gradients flow through it), the 81 solved
cells are the canvas, noised by `pool.make_batch`. Half of the batches take a second, self-conditioned
pass fed with the first pass's logits divided by a temperature T (no gradient through them), exactly
as the sampler feeds its tempered logits back. The loss is cross-entropy on the non-given cells.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from dgemma_mlx.model import Model
from dgemma_mlx.sampler import entropy, gumbel_sample, log_probs
from dgemma_mlx.sudoku import tokens as T


def sampler_canvas(z, canvases, blank, gumbel, noise, fraction):
    """The canvas the sampler hands the next pass, after a pass whose tempered logits were `z`.

    Why: in training every uncorrupted cell is right, while at inference the canvas holds the previous
    pass's own samples wherever it was most certain, and those can be wrong yet plausible. A model that
    never saw such a canvas believes it: run 6 fails medium puzzles on full, confident grids a few cells
    off (TRAINING.md). As in the sampler, a blank cell keeps its sample if it is in the lowest-entropy
    prefix and gets fresh uniform noise otherwise (givens stay); the sampler's prefix length follows its
    entropy bound and how sure the pass is, here it is a random `fraction` of a row's blanks, so every
    size is trained.
    """
    logp = log_probs(z)
    ent = mx.where(blank, entropy(logp), mx.inf)
    rank = mx.argsort(mx.argsort(ent, axis=-1), axis=-1)
    accepted = blank & (rank < mx.floor(fraction * blank.sum(axis=-1))[:, None])
    return mx.where(accepted, gumbel_sample(logp, gumbel), mx.where(blank, noise, canvases))


def loss_fn(model: Model, prompts, canvases, targets, mask, sc_temp, rollout=None, *, sc_passes: int):
    """Cross-entropy of the pass that follows `sc_passes` earlier passes over the same canvas.

    Each earlier pass is self-conditioned on the one before it (the first on nothing), with no
    gradient through any of them, and feeds its logits / T forward as the sampler does. One earlier
    pass is the usual self-conditioning recipe; a chain of several trains the pass the sampler runs
    most often, one whose self-conditioning input came from an already self-conditioned pass.
    With `rollout` (Gumbel noise [P,B,L,V], canvas noise [P,B,L], accepted fractions [P,B], one row
    per earlier pass) each earlier pass also rewrites the canvas as the sampler would
    (`sampler_canvas`), so the graded pass sees the model's own samples, mistakes included.
    """
    cache = model.make_cache(prompts.shape[0])
    model.encode(prompts, cache)
    sc = None
    blank = mask > 0
    for i in range(sc_passes):
        previous = mx.stop_gradient(model.decode(canvases, cache, sc))
        z = previous / sc_temp[:, None, None]
        if rollout is not None:
            gumbel, noise, fraction = (a[i] for a in rollout)
            canvases = sampler_canvas(z, canvases, blank, gumbel, noise, fraction)
        sc = z.astype(model.dtype)
    logits = model.decode(canvases, cache, sc)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")
    return (ce * mask).sum() / mask.sum()


def draw_rollout(rng: np.random.Generator, passes: int, batch: int) -> tuple[mx.array, mx.array, mx.array]:
    """The random inputs of `sampler_canvas` for `passes` earlier passes (see `loss_fn`)."""
    shape = (passes, batch, T.CANVAS_LENGTH)
    uniform = rng.random((*shape, T.VOCAB_SIZE), dtype=np.float32)
    gumbel = -np.log(-np.log(np.clip(uniform, 1e-7, 1 - 1e-7)))
    noise = rng.integers(0, T.VOCAB_SIZE, shape).astype(np.int32)
    return mx.array(gumbel), mx.array(noise), mx.array(rng.random(shape[:2]).astype(np.float32))
