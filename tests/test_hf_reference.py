"""Sanity checks of the reference harness itself (tests/hf_reference.py), before we trust it as a judge."""

import json
import re

import numpy as np
import pytest
import torch
from hf_reference import (
    EARLY_STOP,
    dequantized_to_hf,
    load_reference,
    reference_forward,
    reference_forward_padded,
    reference_generate,
    write_tiny_checkpoint,
)
from safetensors import safe_open
from transformers.models.diffusion_gemma import generation_diffusion_gemma as hf_generation

from dgemma_mlx.noise import TapeExhausted

P, L, V = 7, 8, 128
RNG = np.random.default_rng(0)
PROMPT = RNG.integers(3, V, (2, P))
CANVAS1, CANVAS2 = RNG.integers(0, V, (2, L)), RNG.integers(0, V, (2, L))
# No EOS and no pad: every new id counts, so tokens_per_forward = k*L / passes exactly.
NO_EOS = {"eos_token_id": None, "pad_token_id": None}
TWO_SHORT_CANVASES = {"max_new_tokens": 16, "max_denoising_steps": 2, **NO_EOS}


def stored_keys(path) -> dict[str, tuple[int, ...]]:
    out = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


def test_checkpoint_has_the_real_key_layout(tiny_checkpoint):
    keys = stored_keys(tiny_checkpoint)
    text = {k: s for k, s in keys.items() if "vision" not in k}
    assert any("vision_tower" in k for k in keys)
    assert "lm_head.weight" not in keys
    encoder = sorted(k for k in text if k.startswith("model.encoder."))
    assert encoder == [f"model.encoder.language_model.layers.{i}.layer_scalar" for i in range(3)]
    d = "model.decoder.layers."
    expected_shapes = {
        "model.decoder.embed_tokens.weight": (V, 32),
        f"{d}0.self_attn.q_proj.weight": (32, 32),  # sliding: 4 heads x 8
        f"{d}0.self_attn.v_proj.weight": (16, 32),
        f"{d}2.self_attn.q_proj.weight": (64, 32),  # full: 4 heads x 16
        f"{d}2.self_attn.k_proj.weight": (16, 32),  # one KV head
        f"{d}1.experts.gate_up_proj": (4, 32, 32),
        f"{d}1.experts.down_proj": (4, 32, 16),
        f"{d}0.router.scale": (32,),
        f"{d}0.router.per_expert_scale": (4,),
    }
    assert {k: text[k] for k in expected_shapes} == expected_shapes
    assert f"{d}2.self_attn.v_proj.weight" not in text  # full layers: K = V
    assert "model.decoder.self_conditioning.pre_norm.weight" in text

    # The parity recipe: 1-D weights and both sets of layer scalars are random, and the two sets differ
    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="pt") as f:
        enc = [f.get_tensor(f"model.encoder.language_model.layers.{i}.layer_scalar").item() for i in range(3)]
        dec = [f.get_tensor(f"{d}{i}.layer_scalar").item() for i in range(3)]
        norm = f.get_tensor(f"{d}0.input_layernorm.weight")
    assert all(0.5 <= s <= 1.5 for s in enc + dec) and enc != dec
    assert norm.std() > 0.1

    text_config = json.loads((tiny_checkpoint / "config.json").read_text())["text_config"]
    assert text_config["per_layer_config"] == {"2": {"head_dim": 16, "num_key_value_heads": 1}}
    assert text_config["sliding_window"] == 4
    gen = json.loads((tiny_checkpoint / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1] and gen["pad_token_id"] == 0 and gen["max_denoising_steps"] == 8


def test_legacy_layout_loads_and_gives_identical_logits(tmp_path, tiny_checkpoint):
    legacy = write_tiny_checkpoint(tmp_path / "legacy", seed=0, layout="legacy")
    text_config = json.loads((legacy / "config.json").read_text())["text_config"]
    assert "per_layer_config" not in text_config
    assert (text_config["global_head_dim"], text_config["num_global_key_value_heads"]) == (16, 1)
    assert load_reference(legacy).model.decoder.layers[2].self_attn.k_proj.out_features == 16
    new = reference_forward(tiny_checkpoint, PROMPT, CANVAS1, CANVAS2)
    old = reference_forward(legacy, PROMPT, CANVAS1, CANVAS2)
    for key in new:
        assert np.array_equal(new[key], old[key]), key
    assert new["cache_lengths_after_prompt"].tolist() == [3, 3, 7]  # W-1 on sliding layers
    assert new["cache_lengths_after_canvas"].tolist() == [3, 3, 15]
    assert new["logits_first"].dtype == np.float32 and new["logits_first"].shape == (2, L, V)
    # every fixture is informative: self-conditioning and the second canvas change the logits
    assert np.abs(new["logits_sc"] - new["logits_first"]).max() > 1e-2
    assert np.abs(new["logits_second"] - new["logits_first"]).max() > 1e-2


def test_forward_replays_the_decoder_calls_generate_makes(sharp_checkpoint):
    """The hand-driven passes equal generate()'s own first pass of canvas 1 and of canvas 2."""
    model = load_reference(sharp_checkpoint)
    calls = []
    forward = model.forward

    def spy(**kwargs):
        out = forward(**kwargs)
        if kwargs["self_conditioning_logits"] is None:  # first pass of a canvas
            calls.append((kwargs["decoder_input_ids"].clone(), out.logits.clone()))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "forward", spy)
        ref = reference_generate(sharp_checkpoint, PROMPT, 5, **TWO_SHORT_CANVASES)
    assert len(calls) == 2
    committed = ref["sequences"][:, P : P + L]
    ours = reference_forward(sharp_checkpoint, PROMPT, calls[0][0].numpy(), calls[1][0].numpy())
    assert np.abs(ours["logits_first"] - calls[0][1].numpy()).max() < 1e-6
    # canvas 2 after encoding the committed canvas 1: same path as generate's step 1.f
    second = reference_forward(sharp_checkpoint, PROMPT, committed, calls[1][0].numpy())
    assert np.abs(second["logits_second"] - calls[1][1].numpy()).max() < 1e-6


def test_padded_forward_masks_the_padding(tiny_checkpoint):
    prompt = PROMPT.copy()
    mask = np.ones_like(prompt)
    mask[1, :3] = 0
    padded = reference_forward_padded(tiny_checkpoint, prompt, mask, CANVAS1)
    plain = reference_forward(tiny_checkpoint, prompt, CANVAS1, CANVAS2)["logits_first"]
    assert np.abs(padded[0] - plain[0]).max() < 1e-5  # rows are independent
    assert np.abs(padded[1] - plain[1]).max() > 1e-3
    changed = prompt.copy()
    changed[1, :3] = (changed[1, :3] + 1) % V  # padded ids must not matter
    assert np.abs(reference_forward_padded(tiny_checkpoint, changed, mask, CANVAS1) - padded).max() < 1e-5


def test_recorded_tape_replays_exactly(sharp_checkpoint):
    kwargs = {"max_new_tokens": 12, "max_denoising_steps": 3}  # 12 is not a multiple of L: 2 canvases
    rec = reference_generate(sharp_checkpoint, PROMPT, 3, **kwargs)
    rep = reference_generate(sharp_checkpoint, PROMPT, rec["draws"], **kwargs)
    assert rec["sequences"].shape == (2, P + 2 * L) and rec["sequences"].dtype == np.int64
    assert np.array_equal(rec["sequences"], rep["sequences"])
    assert np.array_equal(rec["tokens_per_forward"], rep["tokens_per_forward"])
    assert rec["draws_used"] == rep["draws_used"] == len(rec["draws"])
    longer = reference_generate(sharp_checkpoint, PROMPT, rec["draws"] + rec["draws"], **kwargs)
    assert np.array_equal(longer["sequences"], rec["sequences"]) and longer["draws_used"] == rec["draws_used"]
    other = reference_generate(sharp_checkpoint, PROMPT, 4, **kwargs)
    assert not np.array_equal(other["sequences"], rec["sequences"])  # the noise really drives the output


def test_draws_come_in_the_order_c_then_sc_per_pass(sharp_checkpoint):
    prompt = PROMPT[1:]  # with seed 1, adaptive stopping ends the third canvas early
    ref = reference_generate(sharp_checkpoint, prompt, 1, max_new_tokens=24, **EARLY_STOP, **NO_EOS)
    canvases = re.findall(r"C(?:SC)+", ref["kinds"])
    assert "".join(canvases) == ref["kinds"] and len(canvases) == 3
    passes = ref["kinds"].count("S")
    assert passes < 3 * 8  # adaptive stopping fired, so the count is not trivially the maximum
    assert ref["tokens_per_forward"].tolist() == pytest.approx([3 * L / passes])
    for kind, value in ref["draws"]:
        assert value.shape == ((1, L) if kind == "C" else (L, V))
        assert value.dtype == (np.int64 if kind == "C" else np.float32)


def test_stability_zero_and_huge_confidence_stop_after_one_pass(sharp_checkpoint):
    one_pass = {"stability_threshold": 0, "confidence_threshold": 1e9}
    ref = reference_generate(sharp_checkpoint, PROMPT, 2, max_new_tokens=24, **one_pass, **NO_EOS)
    assert ref["kinds"] == "CSC" * 3
    assert ref["tokens_per_forward"].tolist() == [L, L]


def test_bad_tapes_and_kwargs_fail_loudly_and_patches_are_restored(sharp_checkpoint):
    rec = reference_generate(sharp_checkpoint, PROMPT, 0, max_new_tokens=8)
    with pytest.raises(TapeExhausted):
        reference_generate(sharp_checkpoint, PROMPT, rec["draws"][:-1], max_new_tokens=8)
    swapped = [rec["draws"][1], rec["draws"][0], *rec["draws"][2:]]
    with pytest.raises(AssertionError, match="asked for 'C'"):
        reference_generate(sharp_checkpoint, PROMPT, swapped, max_new_tokens=8)
    assert torch.multinomial is torch._C._VariableFunctions.multinomial
    initialize_canvas = vars(hf_generation.EntropyBoundSampler)["initialize_canvas"]
    assert initialize_canvas.__qualname__ == "EntropyBoundSampler.initialize_canvas"
    with pytest.raises(TypeError, match="temperature"):
        reference_generate(sharp_checkpoint, PROMPT, 0, temperature=0.5)  # generate() would ignore it


def test_sharded_save_writes_an_index_and_loads_the_same(tmp_path, tiny_checkpoint):
    sharded = write_tiny_checkpoint(tmp_path / "sharded", seed=0, max_shard_size="60KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and sorted(set(index["weight_map"].values())) == shards
    assert set(index["weight_map"]) == set(stored_keys(tiny_checkpoint))
    a = reference_forward(sharded, PROMPT, CANVAS1, CANVAS2)
    b = reference_forward(tiny_checkpoint, PROMPT, CANVAS1, CANVAS2)
    assert np.array_equal(a["logits_second"], b["logits_second"])


def test_dequantized_to_hf_round_trips_and_checks_keys(tmp_path):
    like = write_tiny_checkpoint(tmp_path / "bf16", seed=0, dtype="bfloat16")
    model = load_reference(like, "bfloat16")
    assert model.model.decoder.rotary_emb.sliding_attention_inv_freq.dtype == torch.float32
    with safe_open(str(like / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("model.decoder.norm.weight").dtype == torch.bfloat16
        weights = {k: f.get_tensor(k).float().numpy() for k in f.keys() if "vision" not in k}
    out = dequantized_to_hf(tmp_path / "deq", weights, like)
    a = reference_forward(out, PROMPT, CANVAS1, CANVAS2)
    b = reference_forward(like, PROMPT, CANVAS1, CANVAS2)  # float32 compute on the same bf16 values
    assert np.abs(a["logits_second"] - b["logits_second"]).max() < 1e-5
    bf16 = reference_forward(like, PROMPT, CANVAS1, CANVAS2, dtype="bfloat16")
    assert np.abs(bf16["logits_first"] - b["logits_first"]).max() < 0.1
    norm = "model.decoder.norm.weight"
    with pytest.raises(KeyError, match="missing"):
        dequantized_to_hf(tmp_path / "bad", {k: v for k, v in weights.items() if "norm" not in k}, like)
    with pytest.raises(KeyError, match="unexpected"):
        dequantized_to_hf(tmp_path / "bad", {**weights, "lm_head.weight": weights[norm]}, like)
    with pytest.raises(ValueError, match="shapes differ"):
        dequantized_to_hf(tmp_path / "bad", {**weights, norm: np.ones(3)}, like)
