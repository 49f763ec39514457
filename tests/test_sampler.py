"""The sampler's rules on hand-made numbers (docs/ARCHITECTURE.md, "The sampler"), without any model."""

import math

import mlx.core as mx
import numpy as np
import pytest

from dgemma_mlx.engine import finalize_canvas, new_token_budget
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.noise import NumpyNoise, TapeExhausted, TapeNoise
from dgemma_mlx.sampler import (
    accept_by_entropy,
    entropy,
    gumbel_sample,
    log_probs,
    pad_after_eos,
    temperature,
)


def test_temperature_schedule_counts_down_and_never_reaches_t_min():
    assert temperature(48, 48, 0.4, 0.8) == pytest.approx(0.8)
    assert temperature(1, 48, 0.4, 0.8) == pytest.approx(0.4 + 0.4 / 48, rel=1e-6)
    assert temperature(1, 48, 0.4, 0.8) > 0.4
    assert np.float32(temperature(24, 48, 0.4, 0.8)) == np.float32(0.6)


def test_entropy_bound_acceptance_is_a_prefix_of_sorted_entropies():
    ent = mx.array([[0.5, 0.0, 0.06, 0.05]])
    # sorted: 0, 0.05, 0.06, 0.5 -> sums before each: 0, 0, 0.05, 0.11 -> first three accepted
    assert np.array(accept_by_entropy(ent, 0.1)).tolist() == [[False, True, True, True]]
    # the most certain position is always accepted even with a tiny bound
    assert np.array(accept_by_entropy(mx.array([[3.0, 2.0, 9.0]]), 1e-9)).tolist() == [[False, True, False]]


def test_entropy_matches_definition():
    logits = mx.array([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(entropy(log_probs(logits))[0, 0]) == pytest.approx(expected, rel=1e-6)


def test_gumbel_sample_is_argmax_of_logp_plus_noise():
    logp = log_probs(mx.array([[[0.0, 1.0, 2.0]]]))
    assert int(gumbel_sample(logp, mx.array([[[0.0, 0.0, 0.0]]]))[0, 0]) == 2
    assert int(gumbel_sample(logp, mx.array([[[5.0, 0.0, 0.0]]]))[0, 0]) == 0


def test_pad_after_first_eos_keeps_the_eos():
    tokens = mx.array([[5, 1, 7, 1, 9], [5, 6, 7, 8, 9]])
    out = np.array(pad_after_eos(tokens, mx.array([1]), 0)).tolist()
    assert out == [[5, 1, 0, 0, 0], [5, 6, 7, 8, 9]]


def test_finalize_canvas_pads_rows_finished_earlier_and_after_eos():
    cfg = GenerationConfig(eos_token_id=(1,), pad_token_id=0)
    tokens = np.array([[4, 1, 5, 6], [7, 8, 9, 3], [2, 2, 2, 2]])
    finished = np.array([False, False, True])
    out, fin = finalize_canvas(tokens, finished, cfg, length_reached=False)
    assert out.tolist() == [[4, 1, 0, 0], [7, 8, 9, 3], [0, 0, 0, 0]]
    assert fin.tolist() == [True, False, True]
    no_pad = GenerationConfig(eos_token_id=(1,), pad_token_id=None)
    out, _ = finalize_canvas(tokens, finished, no_pad, length_reached=False)
    assert out.tolist() == tokens.tolist()


def test_canvas_budget_is_ceil_without_truncation_and_max_length_quirk():
    assert math.ceil(new_token_budget(GenerationConfig(max_new_tokens=20), 7) / 8) == 3
    # an explicit max_length wins only over the default max_new_tokens of 256 (a reference quirk)
    assert new_token_budget(GenerationConfig(max_length=30), 10) == 20
    assert new_token_budget(GenerationConfig(max_length=30, max_new_tokens=40), 10) == 40


def test_tape_replays_recorded_draws_and_checks_their_order():
    source = NumpyNoise(3)
    c = np.array(source.canvas(2, 4, 10))
    g = np.array(source.gumbel(2, 4, 10))
    tape = TapeNoise(source.draws)
    assert np.array_equal(np.array(tape.canvas(2, 4, 10)), c)
    assert np.array_equal(np.array(tape.gumbel(2, 4, 10)), g)
    with pytest.raises(TapeExhausted):
        tape.canvas(2, 4, 10)
    wrong_order = TapeNoise(source.draws)
    with pytest.raises(ValueError, match="asked for 'S'"):
        wrong_order.gumbel(2, 4, 10)


def test_tape_round_trips_through_a_file(tmp_path):
    source = NumpyNoise(0)
    source.canvas(1, 3, 5)
    source.gumbel(1, 3, 5)
    TapeNoise(source.draws).save(tmp_path / "tape.npz")
    loaded = TapeNoise.load(tmp_path / "tape.npz")
    assert [k for k, _ in loaded.draws] == ["C", "S"]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(loaded.draws, source.draws, strict=True))
