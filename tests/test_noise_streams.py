"""Our own noise: one uniform per position for the sample, one stream per row.

The sampler's inverse-CDF path must sample the same distribution the reference's Gumbel-max formula
does, and a row's draws (hence its tokens) must not depend on the other rows of its batch.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from tiny_models import tiny_model

from dgemma_mlx import generate
from dgemma_mlx.noise import MLXNoise, RowStream
from dgemma_mlx.sampler import tempered_scores

PROBS = np.array([0.1, 0.0, 0.6, 0.3], dtype=np.float32)


def _raw(rows: int) -> mx.array:
    logits = np.log(np.maximum(PROBS, 1e-30))
    return mx.array(np.broadcast_to(logits, (rows, 1, len(PROBS))).copy())


def test_inverse_cdf_picks_the_id_whose_mass_holds_the_uniform():
    # cumulative mass 0.1, 0.1, 0.7, 1.0: u in [0, .1) -> 0, [.1, .7) -> 2 (id 1 has no mass), [.7, 1) -> 3
    u = mx.array([[0.0], [0.05], [0.1001], [0.5], [0.6999], [0.7001], [0.99999994]])
    _, _, _, sample, draft, confidence = tempered_scores(_raw(7), mx.array(1.0), u)
    assert np.array(sample)[:, 0].tolist() == [0, 0, 2, 2, 2, 3, 3]
    assert np.array(draft)[:, 0].tolist() == [2] * 7
    assert np.allclose(np.array(confidence), 0.6, atol=1e-6)


def test_uniform_and_gumbel_forms_sample_the_same_distribution():
    n = 40_000
    raw = _raw(n)
    uniform = mx.random.uniform(shape=(n, 1), key=mx.random.key(0))
    by_uniform = tempered_scores(raw, mx.array(1.0), uniform).sample
    gumbel = mx.random.gumbel((n, 1, len(PROBS)), key=mx.random.key(1))
    by_gumbel = tempered_scores(raw, mx.array(1.0), gumbel).sample
    for sample in (by_uniform, by_gumbel):
        freq = np.bincount(np.array(sample).ravel(), minlength=len(PROBS)) / n
        assert np.abs(freq - PROBS).max() < 0.01  # 4 standard errors at n = 40k
        assert freq[1] == 0.0


def test_temperature_flattens_the_uniform_path_too():
    n = 40_000
    u = mx.random.uniform(shape=(n, 1), key=mx.random.key(2))
    sample = tempered_scores(_raw(n), mx.array(2.0), u).sample
    tempered = np.sqrt(PROBS) / np.sqrt(PROBS).sum()
    freq = np.bincount(np.array(sample).ravel(), minlength=len(PROBS)) / n
    assert np.abs(freq - tempered).max() < 0.01


def test_row_b_of_a_seeded_batch_draws_what_a_lone_run_seeded_plus_b_draws():
    batch = MLXNoise(5)
    canvas, sample_noise = np.array(batch.canvas(3, 6, 50)), np.array(batch.sample_noise(3, 6, 50))
    for b in range(3):
        alone = MLXNoise(5 + b)
        assert np.array_equal(np.array(alone.canvas(1, 6, 50))[0], canvas[b])
        assert np.array_equal(np.array(alone.sample_noise(1, 6, 50))[0], sample_noise[b])
    assert not np.array_equal(canvas[0], canvas[1])


def test_streams_carry_on_when_a_row_moves_to_another_batch():
    kept, fresh = RowStream(7), RowStream(7)
    first = MLXNoise.from_streams([RowStream(1), kept])
    first.canvas(2, 4, 30)
    later = np.array(MLXNoise.from_streams([kept, RowStream(9)]).canvas(2, 4, 30))[0]
    straight = MLXNoise.from_streams([fresh])
    straight.canvas(1, 4, 30)
    assert np.array_equal(np.array(straight.canvas(1, 4, 30))[0], later)


def test_a_rows_tokens_do_not_depend_on_its_batch():
    """Rows stop at different passes and canvases; a stopped row draws nothing, so the next canvas
    starts its stream where its lone run does (a server joins requests, batch resumes rely on it)."""
    model = tiny_model(vocab_size=64)
    settings = {"max_new_tokens": 32, "eos_token_id": [1], "pad_token_id": 0}
    prompts = [[5, 6, 7], [8, 9, 10], [11, 12, 13]]
    together = generate(model, None, prompts, seed=40, **settings)
    assert len(set(together.stats.passes)) == 3 and together.stats.canvases > 1
    for b, prompt in enumerate(prompts):
        alone = generate(model, None, [prompt], seed=40 + b, **settings)
        assert alone.new_tokens[0] == together.new_tokens[b]
        assert alone.stats.passes[0] == together.stats.passes[b]
