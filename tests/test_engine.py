"""The generation engine and API on a random tiny model: events, pins, budgets, seeds, errors."""

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import tiny_model

from dgemma_mlx import CanvasEvent, DGemmaError, FinishEvent, PassEvent, generate, stream_generate

FAST = {"max_denoising_steps": 6, "eos_token_id": [1], "pad_token_id": 0}


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=64)


def events_of(model, prompt, **kwargs):
    return list(stream_generate(model, None, prompt, **{**FAST, **kwargs}))


def test_one_pass_event_per_pass_and_one_canvas_event_per_canvas(model):
    events = events_of(model, [5, 6, 7], max_new_tokens=20, seed=3, stability_threshold=None)
    passes = [e for e in events if isinstance(e, PassEvent)]
    canvases = [e for e in events if isinstance(e, CanvasEvent)]
    assert isinstance(events[-1], FinishEvent)
    result = events[-1].result
    # no adaptive stopping: every canvas runs all 6 passes, steps counting down 6..1
    assert [e.step for e in passes[:6]] == [6, 5, 4, 3, 2, 1]
    assert len(canvases) == result.stats.canvases and 1 <= len(canvases) <= 3
    assert len(passes) == 6 * len(canvases)
    first = passes[0]
    assert first.draft.shape == first.canvas.shape == first.accepted.shape == first.entropy.shape == (1, 8)
    assert first.temperature == pytest.approx(0.8) and passes[5].temperature == pytest.approx(0.4 + 0.4 / 6)
    assert first.accepted.sum() >= 1  # the most certain position is always accepted
    # the canvas event commits the last draft (before any EOS padding)
    last_draft = [e for e in passes if e.canvas_index == 0][-1].draft
    committed = canvases[0].tokens
    eos_at = np.flatnonzero(last_draft[0] == 1)
    keep = eos_at[0] + 1 if eos_at.size else 8
    assert committed[0, :keep].tolist() == last_draft[0, :keep].tolist()


def test_budget_runs_ceil_canvases_and_never_truncates(model):
    result = generate(model, None, [5, 6, 7], max_new_tokens=20, seed=1, eos_token_id=None)
    assert result.stats.canvases == 3  # ceil(20 / 8)
    assert result.sequences.shape == (1, 3 + 24)
    assert result.stats.generated_tokens == [24]


def test_same_seed_same_output_and_different_seed_differs(model):
    a = generate(model, None, [5, 6, 7], max_new_tokens=16, seed=11)
    b = generate(model, None, [5, 6, 7], max_new_tokens=16, seed=11)
    c = generate(model, None, [5, 6, 7], max_new_tokens=16, seed=12)
    assert np.array_equal(a.sequences, b.sequences)
    assert not np.array_equal(a.sequences, c.sequences)


def test_pinned_positions_are_never_renoised_and_are_committed(model):
    pins = {0: 9, 3: 10, 7: 11}
    events = events_of(model, [5, 6, 7], max_new_tokens=8, seed=2, fixed_positions=pins, eos_token_id=None)
    for e in events:
        if isinstance(e, PassEvent):
            assert all(e.canvas[0, p] == t and e.draft[0, p] == t for p, t in pins.items())
    final = events[-1].result.new_tokens[0]
    assert [final[p] for p in pins] == list(pins.values())


@pytest.mark.parametrize(
    "pins, message",
    [
        ({8: 1}, "outside the canvas"),
        ({16: 1}, "outside the 2 canvases"),
        ({0: 64}, "outside the vocabulary"),
    ],
)
def test_bad_pins_are_one_line_errors(model, pins, message):
    budget = 8 if 8 in pins else 16  # positions past the first canvas pin later ones, up to the budget
    with pytest.raises(DGemmaError, match=message):
        generate(model, None, [5, 6], fixed_positions=pins, max_new_tokens=budget)


def test_batch_rows_of_different_length_stop_independently(model):
    result = generate(
        model,
        None,
        [[5, 6, 7, 8, 9, 10], [11, 12]],
        max_new_tokens=24,
        seed=5,
        stability_threshold=0,
        confidence_threshold=1e3,
        t_min=0.01,
        t_max=0.02,
    )
    assert result.sequences.shape[0] == 2
    assert result.prompt_lengths == [6, 2]
    # with a huge confidence threshold and no stability requirement every row stops after one pass
    assert result.stats.passes == [result.stats.canvases] * 2


def test_stats_are_filled(model):
    result = generate(model, None, [5, 6, 7], max_new_tokens=8, seed=0)
    s = result.stats
    assert s.prompt_tokens == 3 and s.canvases == 1 and s.passes[0] >= 1
    assert s.tokens_per_forward[0] == pytest.approx(s.generated_tokens[0] / s.passes[0])
    assert s.generation_time > 0 and s.prompt_time > 0 and s.peak_memory_gb > 0
    assert set(s.to_dict()) >= {"tokens_per_second", "passes", "tokens_per_forward", "peak_memory_gb"}


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("hello", "ships no tokenizer"),
        ([], "empty prompt"),
        ([5, 99], "outside the vocabulary"),
        ([{"role": "user", "content": "hi"}], "ships no tokenizer"),
    ],
)
def test_bad_prompts_are_one_line_errors(model, prompt, message):
    with pytest.raises(DGemmaError, match=message):
        generate(model, None, prompt)


def test_decoder_never_mutates_the_cache(model):
    cache = model.make_cache(1)
    model.encode(mx.array([[5, 6, 7, 8, 9, 10, 11]]), cache)
    before = [np.array(a) for a in cache.state()]
    logits = model.decode(mx.array([[1, 2, 3, 4, 5, 6, 7, 8]]), cache)
    model.decode(mx.array([[1, 2, 3, 4, 5, 6, 7, 8]]), cache, logits.astype(model.dtype))
    after = [np.array(a) for a in cache.state()]
    assert cache.offset == 7 and [layer.length for layer in cache.layers] == [3, 3, 7]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_chunked_prefill_matches_one_shot(model):
    ids = mx.array([list(range(3, 20))])
    one, chunked = model.make_cache(1), model.make_cache(1)
    model.encode(ids, one)
    for start in range(0, 17, 5):
        model.encode(ids[:, start : start + 5], chunked)
    canvas = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
    assert np.allclose(
        np.array(model.decode(canvas, one)), np.array(model.decode(canvas, chunked)), atol=1e-5
    )
