"""Our MLX model against transformers' DiffusionGemma: logits and token-for-token generation."""

import mlx.core as mx
import numpy as np
import pytest
from hf_reference import (
    EARLY_STOP,
    reference_forward,
    reference_forward_padded,
    reference_generate,
    write_tiny_checkpoint,
)

from dgemma_mlx.engine import block_diffusion
from dgemma_mlx.events import FinishEvent
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.loading import load_model
from dgemma_mlx.noise import TapeNoise

ATOL = 1e-4


def mlx_forward(model, prompt, canvas1, canvas2, sc_scale=1.7):
    cache = model.make_cache(prompt.shape[0])
    model.encode(mx.array(prompt), cache)
    after_prompt = [layer.length for layer in cache.layers]
    first = model.decode(mx.array(canvas1), cache)
    with_sc = model.decode(mx.array(canvas1), cache, (sc_scale * first).astype(model.dtype))
    model.encode(mx.array(canvas1), cache)
    second = model.decode(mx.array(canvas2), cache)
    return {
        "logits_first": np.array(first),
        "logits_sc": np.array(with_sc),
        "logits_second": np.array(second),
        "cache_lengths_after_prompt": np.array(after_prompt),
        "cache_lengths_after_canvas": np.array([layer.length for layer in cache.layers]),
    }


@pytest.mark.parametrize("layout", ["per_layer_config", "legacy"])
def test_forward_logits_match_reference(tmp_path, layout):
    path = write_tiny_checkpoint(tmp_path / layout, seed=2, layout=layout)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 128, (2, 7))  # longer than the sliding window (4)
    canvas1, canvas2 = rng.integers(0, 128, (2, 8)), rng.integers(0, 128, (2, 8))
    ref = reference_forward(path, prompt, canvas1, canvas2)
    ours = mlx_forward(load_model(path)[0], prompt, canvas1, canvas2)
    assert (
        ref["cache_lengths_after_prompt"].tolist() == ours["cache_lengths_after_prompt"].tolist() == [3, 3, 7]
    )
    assert (
        ref["cache_lengths_after_canvas"].tolist()
        == ours["cache_lengths_after_canvas"].tolist()
        == [3, 3, 15]
    )
    for key in ("logits_first", "logits_sc", "logits_second"):
        diff = np.abs(ref[key] - ours[key]).max()
        print(f"{layout} {key}: max |diff| {diff:.2e} (logit scale {np.abs(ref[key]).max():.2f})")
        assert diff < ATOL, key
    # self-conditioning and the second canvas really change the output (the test could fail)
    assert np.abs(ref["logits_sc"] - ref["logits_first"]).max() > 1e-2


def test_left_padded_batch_matches_reference(tiny_checkpoint):
    rng = np.random.default_rng(1)
    prompt = rng.integers(3, 128, (2, 9))
    mask = np.ones_like(prompt)
    mask[1, :5] = 0
    prompt[1, :5] = 0
    canvas = rng.integers(0, 128, (2, 8))
    ref = reference_forward_padded(tiny_checkpoint, prompt, mask, canvas)
    model = load_model(tiny_checkpoint)[0]
    cache = model.make_cache(2)
    cache.left_padding = mx.array([0, 5])
    model.encode(mx.array(prompt), cache)
    ours = np.array(model.decode(mx.array(canvas), cache))
    assert np.abs(ref - ours).max() < ATOL


def run_ours(path, prompts, draws, **kwargs):
    return run_model(load_model(path)[0], prompts, draws, **kwargs)


def run_model(model, prompts, draws, **kwargs):
    """Our engine on `prompts`, consuming exactly the recorded draws of a reference run."""
    config = GenerationConfig().replace_explicit(**kwargs)
    tape = TapeNoise(draws)
    result = None
    for event in block_diffusion(model, prompts, config, tape):
        if isinstance(event, FinishEvent):
            result = event.result
    assert tape.remaining() == 0, "we consumed fewer random draws than the reference"
    return result


GEN = {"max_denoising_steps": 12, "eos_token_id": [1], "pad_token_id": 0}
SETTINGS = [
    pytest.param({"stability_threshold": 0, "confidence_threshold": 0.05}, id="stability0"),
    pytest.param({"stability_threshold": 1, "confidence_threshold": 0.005}, id="stability1-default"),
    pytest.param({"stability_threshold": 2, "confidence_threshold": 0.05}, id="stability2"),
    pytest.param({"stability_threshold": 3, "confidence_threshold": 0.2}, id="stability3"),
    pytest.param(EARLY_STOP, id="early-stop"),
    pytest.param({"stability_threshold": None, "confidence_threshold": None}, id="no-adaptive-stop"),
    pytest.param({"t_min": None, "t_max": None}, id="no-temperature"),
]


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generation_matches_reference_token_for_token(sharp_checkpoint, settings, seed):
    prompt = np.random.default_rng(100 + seed).integers(3, 128, (2, 7))
    kwargs = {**GEN, "max_new_tokens": 20, **settings}  # 20 is not a multiple of the canvas (8)
    ref = reference_generate(sharp_checkpoint, prompt, seed, **kwargs)
    ours = run_ours(sharp_checkpoint, prompt.tolist(), ref["draws"], **kwargs)
    assert np.array_equal(ours.sequences, ref["sequences"])
    assert np.allclose(ours.stats.tokens_per_forward, ref["tokens_per_forward"], rtol=1e-6)


def test_rows_stop_at_different_passes_and_eos_mid_canvas(sharp_checkpoint):
    """Search a few seeds for the interesting cases, then check parity on them (they must occur)."""
    kwargs = {
        **GEN,
        "max_new_tokens": 24,
        **EARLY_STOP,
        "eos_token_id": [1, 5, 9, 17, 33],
    }
    saw_uneven_stop = saw_mid_eos = False
    for seed in range(6):
        prompt = np.random.default_rng(200 + seed).integers(3, 128, (2, 7))
        ref = reference_generate(sharp_checkpoint, prompt, seed, **kwargs)
        ours = run_ours(sharp_checkpoint, prompt.tolist(), ref["draws"], **kwargs)
        assert np.array_equal(ours.sequences, ref["sequences"])
        assert np.allclose(ours.stats.tokens_per_forward, ref["tokens_per_forward"], rtol=1e-6)
        saw_uneven_stop |= len(set(ours.stats.passes)) > 1
        new = ours.sequences[:, 7:]
        for row in new:
            eos = np.flatnonzero(np.isin(row, kwargs["eos_token_id"]))
            saw_mid_eos |= bool(eos.size and eos[0] % 8 != 7 and (row[eos[0] + 1 :] == 0).all())
    assert saw_uneven_stop, "no seed made the two rows stop after different numbers of passes"
    assert saw_mid_eos, "no seed produced an EOS in the middle of a canvas"


def test_left_padded_generation_matches_reference(sharp_checkpoint):
    rng = np.random.default_rng(7)
    long, short = rng.integers(3, 128, 9).tolist(), rng.integers(3, 128, 4).tolist()
    ids = np.array([long, [0] * 5 + short])
    mask = np.array([[1] * 9, [0] * 5 + [1] * 4])
    kwargs = {**GEN, "max_new_tokens": 24}
    ref = reference_generate(sharp_checkpoint, ids, 3, attention_mask=mask, **kwargs)
    ours = run_ours(sharp_checkpoint, [long, short], ref["draws"], **kwargs)
    assert np.array_equal(ours.sequences, ref["sequences"])
    assert np.allclose(ours.stats.tokens_per_forward, ref["tokens_per_forward"], rtol=1e-6)


def test_sudoku_grid_rope_matches_reference(tmp_path):
    """The bundled Sudoku model's linear RoPE with factor < 1 means the same in transformers as here."""
    from hf_reference import TINY_TEXT

    from dgemma_mlx.sudoku.architecture import rope_parameters

    rope = rope_parameters(TINY_TEXT["head_dim"])  # what the shipped config holds, at the tiny head size
    path = write_tiny_checkpoint(tmp_path / "grid", seed=3, text_overrides={"rope_parameters": rope})
    plain = write_tiny_checkpoint(tmp_path / "plain", seed=3)
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, 128, (2, 7))
    canvas1, canvas2 = rng.integers(0, 128, (2, 8)), rng.integers(0, 128, (2, 8))
    ref = reference_forward(path, prompt, canvas1, canvas2)
    ours = mlx_forward(load_model(path)[0], prompt, canvas1, canvas2)
    for key in ("logits_first", "logits_sc", "logits_second"):
        assert np.abs(ref[key] - ours[key]).max() < ATOL, key
    # the RoPE really differs from the default one (same weights, other logits)
    default = reference_forward(plain, prompt, canvas1, canvas2)
    assert np.abs(default["logits_first"] - ref["logits_first"]).max() > 1e-2
