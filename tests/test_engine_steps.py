"""The engine's named steps run alone, and what the front door's result carries for every caller."""

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import tiny_model

from dgemma_mlx import CanvasEvent, FinishEvent, PassEvent, generate, stream_generate
from dgemma_mlx.cache import LayerCache
from dgemma_mlx.engine import commit_canvas, denoise_pass, encode_prompt, start_canvas
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.noise import MLXNoise, NumpyNoise, TapeNoise
from dgemma_mlx.sampler import StopRule

FAST = {"max_denoising_steps": 6, "eos_token_id": [1], "pad_token_id": 0}


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=64)


def config(**overrides):
    return GenerationConfig().replace_explicit(**{**FAST, **overrides})


def test_steps_by_hand_equal_the_loop(model):
    """Encode, one canvas of passes and a commit, driven step by step, give the loop's own tokens."""
    cfg = config(max_new_tokens=8, stability_threshold=None)
    recorder = NumpyNoise(4)
    looped = generate(model, None, [5, 6, 7], config=cfg, noise=recorder)
    tape = TapeNoise(recorder.draws)
    generation = encode_prompt(model, [[5, 6, 7]], cfg)
    assert generation.prompt_width == 3 and generation.canvases == 1 and generation.cache.offset == 3
    canvas = start_canvas(model, generation, 0, tape)
    events = [denoise_pass(model, generation, canvas, step, tape) for step in range(6, 0, -1)]
    assert [e.pass_index for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events] == [6, 5, 4, 3, 2, 1]
    committed = commit_canvas(generation, canvas)
    assert tape.remaining() == 0
    assert np.array_equal(generation.sequences, looped.sequences)
    assert committed.tokens.tolist() == [looped.sequences[0, 3:].tolist()]
    assert [row.tokens for row in committed.rows] == looped.new_tokens  # the only canvas: its rows are final


def test_a_pass_renoises_exactly_the_rejected_positions(model):
    cfg = config(max_new_tokens=8, stability_threshold=None, entropy_bound=1e-9)
    generation = encode_prompt(model, [[5, 6, 7]], cfg)
    canvas = start_canvas(model, generation, 0, MLXNoise(0))
    event = denoise_pass(model, generation, canvas, 6, MLXNoise(1))
    assert event.accepted.sum() == 1  # a tiny bound accepts only the most certain position
    sample_kept = event.canvas[event.accepted]
    assert sample_kept.size == 1 and generation.passes.tolist() == [1]
    assert np.array_equal(np.array(canvas.x), event.canvas)
    assert np.array_equal(np.array(canvas.draft), event.draft)


def test_stop_rule_needs_stability_and_confidence():
    rule = StopRule(stability_threshold=1, confidence_threshold=0.5, batch=2, length=3)
    draft = mx.array([[1, 2, 3], [4, 5, 6]])
    sure, unsure = mx.zeros((2, 3)), mx.array([[0.0] * 3, [1.0] * 3])
    assert np.array(rule(draft, sure)).tolist() == [False, False]  # nothing to be stable against yet
    assert np.array(rule(draft, unsure)).tolist() == [True, False]  # stable; row 1 not confident
    assert np.array(rule(mx.array([[1, 2, 0], [4, 5, 6]]), sure)).tolist() == [False, True]
    always_stable = StopRule(stability_threshold=0, confidence_threshold=0.5, batch=2, length=3)
    assert np.array(always_stable(draft, unsure)).tolist() == [True, False]


def test_the_decoder_reads_the_cache_through_a_read_only_view():
    layer = LayerCache(keep=2)
    k = mx.ones((1, 1, 3, 4))
    all_k, _ = layer.attend(k, k)
    assert all_k.shape[2] == 3 and layer.length == 2  # the encoder stores (a sliding layer keeps 2)
    view = layer.read_only()
    seen, _ = view.attend(k, k)
    assert seen.shape[2] == 5 and layer.length == 2 and view.length == 2  # the decoder stores nothing


def test_finish_reasons_eos_length_and_stopped(model):
    every_id = list(range(64))
    eos = generate(model, None, [5, 6, 7], max_new_tokens=24, seed=5, eos_token_id=every_id, pad_token_id=0)
    assert eos.finish_reasons == ["eos"] and eos.finished == [True] and eos.stats.canvases == 1
    length = generate(model, None, [5, 6, 7], max_new_tokens=16, seed=5, eos_token_id=None)
    assert length.finish_reasons == ["length"] and length.finished == [False] and length.stats.canvases == 2
    passes = []

    def stop_after_three() -> bool:
        return len(passes) >= 3

    stopped = None
    for event in stream_generate(
        model, None, [5, 6, 7], max_new_tokens=16, seed=5, eos_token_id=None, stop_requested=stop_after_three
    ):
        if isinstance(event, PassEvent):
            passes.append(event)
        elif isinstance(event, FinishEvent):
            stopped = event.result
    assert len(passes) == 3 and stopped is not None
    assert stopped.finish_reasons == ["stopped"] and stopped.stats.canvases == 0
    assert stopped.new_tokens == [[]] and stopped.stats.passes == [3]


def test_result_carries_the_resolved_config(model):
    result = generate(model, None, [5, 6, 7], max_new_tokens=8, seed=1, entropy_bound=0.25)
    assert result.config.entropy_bound == 0.25 and result.config.max_new_tokens == 8
    assert result.config.eos_token_id == (1,)


def test_rows_handed_out_at_their_canvas_equal_the_final_rows(model):
    """A batch job writes CanvasEvent.rows as they come; they must be the result's rows, field for field."""
    early = {}
    result = None
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    settings = {"max_new_tokens": 32, "seed": 3, "eos_token_id": [1, 2, 3], "pad_token_id": 0}
    for event in stream_generate(model, None, prompts, **settings):
        if isinstance(event, CanvasEvent):
            for row in event.rows:
                assert row.index not in early
                early[row.index] = (event.canvas_index, row)
        elif isinstance(event, FinishEvent):
            result = event.result
    assert sorted(early) == [0, 1, 2]
    assert any(canvas < result.stats.canvases - 1 for canvas, _ in early.values())  # some row ended early
    assert set(result.finish_reasons) == {"eos", "length"}
    for b, (_, row) in early.items():
        assert row == result.row(b)


def test_without_a_pad_id_rows_are_final_only_at_the_end(model):
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    settings = {"max_new_tokens": 32, "seed": 3, "eos_token_id": [1, 2, 3]}
    events = stream_generate(model, None, prompts, pad_token_id=0, **settings)
    with_pad = [e.rows for e in events if isinstance(e, CanvasEvent)]
    assert [len(rows) for rows in with_pad] == [0, 1, 1, 1]  # rows end at canvases 2, 3, 4: handed out there
    events = stream_generate(model, None, prompts, pad_token_id=None, **settings)
    without = [e.rows for e in events if isinstance(e, CanvasEvent)]
    assert all(rows == () for rows in without[:-1]) and len(without[-1]) == 3
