"""A starting canvas (`canvas_init`) means what transformers' `generate(decoder_input_ids=...)` means.

The reference pops `decoder_input_ids` as the first canvas only, still draws (and discards) the random
canvas it replaces, and lets the sampler accept or renoise its positions like any other; later
canvases start from noise. Both sides consume one recorded noise tape, so every one of those rules
shows up token for token (docs/ARCHITECTURE.md, "The engine").
"""

import mlx.core as mx
import numpy as np
import pytest
import torch
from hf_reference import _generation_kwargs, load_reference, replayed_noise
from test_parity import GEN
from tiny_models import tiny_model

from dgemma_mlx import generate, stream_generate
from dgemma_mlx.engine import block_diffusion, encode_prompt, start_canvas
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.events import FinishEvent, PassEvent
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.loading import load_model
from dgemma_mlx.noise import NumpyNoise, TapeNoise


def reference_with_start(path, prompt, start, seed, **gen_kwargs):
    """The reference's `generate` with `decoder_input_ids=start`, randomness from `NumpyNoise(seed)`."""
    model = load_reference(path)
    kwargs = _generation_kwargs(gen_kwargs)
    with torch.no_grad(), replayed_noise(seed) as draws:
        out = model.generate(
            torch.tensor(prompt, dtype=torch.int64),
            decoder_input_ids=torch.tensor(start, dtype=torch.int64),
            return_dict_in_generate=True,
            **kwargs,
        )
    return out.sequences.numpy(), out.tokens_per_forward.float().numpy(), draws.used


def run_model(model, prompts, draws, canvas_init=None, **kwargs):
    """Our engine consuming exactly the draws the reference made (and no fewer)."""
    config = GenerationConfig().replace_explicit(**kwargs)
    tape = TapeNoise(draws)
    events = list(block_diffusion(model, prompts, config, tape, canvas_init=canvas_init))
    assert tape.remaining() == 0, "we consumed fewer random draws than the reference"
    assert isinstance(events[-1], FinishEvent)
    return events[-1].result


SETTINGS = [
    pytest.param({"stability_threshold": 1, "confidence_threshold": 0.005}, id="default-stop"),
    pytest.param({"stability_threshold": 0, "confidence_threshold": 0.05}, id="early-stop"),
    pytest.param({"stability_threshold": None, "confidence_threshold": None}, id="no-adaptive-stop"),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_starting_canvas_matches_reference_token_for_token(sharp_checkpoint, settings, seed):
    rng = np.random.default_rng(300 + seed)
    prompt = rng.integers(3, 128, (2, 7))
    start = rng.integers(0, 128, (2, 8))  # a full first canvas per row
    kwargs = {**GEN, "max_new_tokens": 20, **settings}  # three canvases: only the first is seeded
    ref_seq, ref_tpf, draws = reference_with_start(sharp_checkpoint, prompt, start, seed, **kwargs)
    assert "".join(kind for kind, _ in draws).startswith("CSC")  # the replaced canvas is still drawn
    ours = run_model(load_model(sharp_checkpoint)[0], prompt.tolist(), draws, canvas_init=start, **kwargs)
    assert np.array_equal(ours.sequences, ref_seq)
    assert np.allclose(ours.stats.tokens_per_forward, ref_tpf, rtol=1e-6)


def test_the_starting_canvas_changes_the_output_and_is_what_the_first_pass_reads(sharp_checkpoint):
    """Guards the parity test against passing vacuously: the same tape without the starting canvas
    gives other tokens, and the first pass's draft is the model's argmax over the given ids."""
    rng = np.random.default_rng(7)
    prompt, start = rng.integers(3, 128, (2, 7)), rng.integers(0, 128, (2, 8))
    # one pass, so the committed canvas is the draft of the pass that read the starting canvas
    kwargs = {**GEN, "max_new_tokens": 8, "max_denoising_steps": 1, "confidence_threshold": None}
    with_start, _, draws = reference_with_start(sharp_checkpoint, prompt, start, 0, **kwargs)
    model = load_model(sharp_checkpoint)[0]
    plain = run_model(model, prompt.tolist(), draws, **kwargs)
    assert not np.array_equal(plain.sequences, with_start)
    events = stream_generate(
        model, None, prompt.tolist(), noise=TapeNoise(draws), canvas_init=start, **kwargs
    )
    first = next(e for e in events if isinstance(e, PassEvent))
    cache = model.make_cache(2)
    model.encode(mx.array(prompt), cache)
    expected = np.array(mx.argmax(model.decode(mx.array(start), cache), axis=-1))
    assert np.array_equal(first.draft, expected)


def test_a_short_start_keeps_the_noise_past_its_end_and_pins_win():
    model = tiny_model(vocab_size=64)
    kw = {"max_new_tokens": 16, "max_denoising_steps": 3, "eos_token_id": [], "pad_token_id": 0}
    recorder = NumpyNoise(5)
    events = []
    result = None
    for event in stream_generate(
        model, None, [5, 6, 7], noise=recorder, canvas_init=[9, 10, 11], fixed_positions={1: 30}, **kw
    ):
        events.append(event)
        result = getattr(event, "result", result)
    first_noise = recorder.draws[0][1][0]
    # what the first pass read: the recorded draw with the start over positions 0..2 and the pin on 1
    expected = first_noise.copy()
    expected[:3] = [9, 30, 11]
    # replaying the same tape, our engine's first canvas is exactly that (seen through start_canvas)
    cfg = GenerationConfig().replace_explicit(**kw)
    generation = encode_prompt(model, [[5, 6, 7]], cfg, fixed_positions={1: 30}, canvas_init=[9, 10, 11])
    canvas = start_canvas(model, generation, 0, TapeNoise(recorder.draws))
    assert np.array(canvas.x)[0].tolist() == expected.tolist()
    # the second canvas starts from plain noise (a 3-id start seeds the first canvas only)
    second = start_canvas(model, generation, 1, TapeNoise([recorder.draws[0]]))
    assert np.array(second.x)[0].tolist() == first_noise.tolist()
    assert all(e.draft[0, 1] == 30 for e in events if isinstance(e, PassEvent) and e.canvas_index == 0)
    assert result is not None and result.new_tokens[0][1] == 30


@pytest.mark.parametrize(
    "start, message",
    [
        ([[1, 2], [3, 4]], "canvas_init given for 2 rows, batch has 1"),
        (list(range(17)), "canvas_init has 17 ids; this run's canvases hold 16"),
        ([0, 64], "canvas_init token id 64 is outside the vocabulary"),
    ],
)
def test_bad_starting_canvases_are_one_line_errors(start, message):
    model = tiny_model(vocab_size=64)
    with pytest.raises(DGemmaError, match=message):
        generate(model, None, [5, 6], canvas_init=start, max_new_tokens=16)
