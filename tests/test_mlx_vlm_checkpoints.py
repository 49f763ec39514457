"""Checkpoints written by mlx-vlm's own converter (the mlx-community layout) against the reference.

Sources are tiny random transformers checkpoints in bf16 (`mlx_vlm_checkpoints.write_source`),
converted by mlx-vlm's real `convert` into 4-bit affine (its default, with its 8-bit modules), mxfp4
and bf16. The reference always runs in float32 on exactly the weights a file holds, dequantized
independently of our loader (`mlx_vlm_checkpoints.dequantized_hf_weights`), so with our model also in
float32 the tolerance is the float32 parity one (1e-4).

The first tests check the harness without our code: the conversions hold what mlx-vlm's recipe says,
the independent dequantization reproduces the source weights, and mlx-vlm's own model matches the
reference on them, so a failure further down is ours.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hf_reference import (
    EARLY_STOP,
    _read_checkpoint,
    dequantized_to_hf,
    reference_forward,
    reference_generate,
)
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from mlx_vlm_checkpoints import (
    KINDS,
    convert_with_mlx_vlm,
    dequantized_hf_weights,
    load_vlm,
    quantization_of,
    read_safetensors,
    vlm_forward,
    write_source,
)
from test_parity import ATOL, mlx_forward, run_model
from tiny_models import vocabulary

from dgemma_mlx import load

LOGIT_KEYS = ("logits_first", "logits_sc", "logits_second")
VOCAB = 128


def _build(root, sharpened: bool, seed: int) -> dict:
    """Source, the three mlx-vlm conversions, and the float32 dequantized copy of each for the reference."""
    source = write_source(root / "hf", seed=seed, sharpened=sharpened)
    out = {"source": source}
    for kind in KINDS:
        converted = convert_with_mlx_vlm(source, root / kind, kind)
        weights, _ = dequantized_hf_weights(converted)
        out[kind] = converted
        out[f"{kind}-deq"] = dequantized_to_hf(root / f"{kind}-deq", weights, source)
    return out


@pytest.fixture(scope="session")
def vlm_plain(tmp_path_factory):
    """Unsharpened (logits keep a moderate scale): for the logit tests."""
    return _build(tmp_path_factory.mktemp("vlm-plain"), sharpened=False, seed=11)


@pytest.fixture(scope="session")
def vlm_sharp(tmp_path_factory):
    """Embedding x SHARPEN: peaky enough for acceptance and adaptive stopping, for generation."""
    return _build(tmp_path_factory.mktemp("vlm-sharp"), sharpened=True, seed=12)


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, VOCAB, (2, 7))  # longer than the sliding window (4)
    return prompt, rng.integers(0, VOCAB, (2, 8)), rng.integers(0, VOCAB, (2, 8))


def _max_diffs(a: dict, b: dict) -> dict[str, float]:
    return {key: float(np.abs(a[key] - b[key]).max()) for key in LOGIT_KEYS}


# --- the harness: mlx-vlm's conversions and mlx-vlm's own model --------------------------------------


EIGHT_BIT = ("embed_tokens", ".self_attn.", ".mlp.", ".router.proj")


@pytest.mark.parametrize("kind", KINDS)
def test_mlx_vlm_conversion_holds_its_recipe(vlm_plain, kind):
    """What mlx-vlm wrote: fused experts, its 8-bit modules, and dequantized values near the source."""
    directory = vlm_plain[kind]
    stored = read_safetensors(directory)
    assert "model.decoder.layers.0.experts.gate_up_proj.weight" in stored
    assert "model.decoder.layers.0.experts.down_proj.weight" in stored
    weights, params = dequantized_hf_weights(directory)
    if kind == "bf16":
        assert quantization_of(directory) == {} and not params
        assert all(v.dtype == mx.bfloat16 for k, v in stored.items() if mx.issubdtype(v.dtype, mx.floating))
    else:
        experts = params["model.decoder.layers.0.experts.gate_up_proj"]
        want = {"affine4": (64, 4, "affine"), "mxfp4": (32, 4, "mxfp4")}[kind]
        assert (experts["group_size"], experts["bits"], experts["mode"]) == want
        eight = [m for m in params if any(s in m for s in EIGHT_BIT)]
        assert "model.decoder.layers.0.router.proj" in eight and "model.decoder.embed_tokens" in eight
        assert all(params[m] == {"group_size": 64, "bits": 8, "mode": "affine"} for m in eight)
        others = [m for m in params if m not in eight]
        assert others and all((params[m]["bits"], params[m]["mode"]) == want[1:] for m in others)
    # every dequantized tensor is the source tensor up to its quantization error (bf16: exactly)
    source = {k: v.float().numpy() for k, v in _read_checkpoint(vlm_plain["source"]).items()}
    assert sorted(weights) == sorted(k for k in source if "vision" not in k)
    for key, value in weights.items():
        module = key.removesuffix(".weight")
        bits = params[module]["bits"] if module in params else None
        err = np.linalg.norm(value - source[key]) / np.linalg.norm(source[key])
        limit = {None: 0.0, 8: 0.01, 4: 0.2}[bits]
        assert err <= limit, f"{key}: relative error {err:.3g} for {bits} bits"


@pytest.mark.parametrize("kind", KINDS)
def test_mlx_vlm_runs_its_own_conversion(vlm_plain, kind):
    """Stand-alone check: mlx-vlm's model (run in float32) matches the reference on the file's weights."""
    prompt, canvas1, canvas2 = _inputs(5)
    ref = reference_forward(vlm_plain[f"{kind}-deq"], prompt, canvas1, canvas2)
    model = load_vlm(vlm_plain[kind])
    model.set_dtype(mx.float32)  # MLX's CPU backend gathers unquantized experts in float32 only
    diffs = _max_diffs(ref, vlm_forward(model, prompt, canvas1, canvas2))
    assert max(diffs.values()) < ATOL, diffs


# --- our loader on mlx-vlm's files -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_mlx_vlm_checkpoint_loads_as_stored(vlm_plain, kind):
    model, tokenizer = load(vlm_plain[kind])
    assert tokenizer is not None  # the converter's processor files carry the tokenizer
    words = "the sky is blue".split()
    vocab = vocabulary()
    assert tokenizer.encode(" ".join(words), add_special_tokens=False) == [vocab[w] for w in words]
    assert tokenizer.has_chat_template
    layer = model.model.decoder.layers[0]
    gate = layer.experts.switch_glu.gate_proj
    if kind == "bf16":
        assert not isinstance(gate, QuantizedSwitchLinear)
        assert not isinstance(layer.router.proj, nn.QuantizedLinear)
        return
    assert isinstance(gate, QuantizedSwitchLinear)
    assert (gate.group_size, gate.bits, gate.mode) == {
        "affine4": (64, 4, "affine"),
        "mxfp4": (32, 4, "mxfp4"),
    }[kind]
    router = layer.router.proj  # mlx-vlm quantizes the router (8-bit); we never do, but must read it
    assert isinstance(router, nn.QuantizedLinear) and (router.bits, router.mode) == (8, "affine")
    embed = model.model.decoder.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding) and (embed.bits, embed.group_size) == (8, 64)


@pytest.mark.parametrize("kind", KINDS)
def test_mlx_vlm_checkpoint_logits_match_reference(vlm_plain, kind):
    """In float32, exactly the file's weights: float32 parity tolerance."""
    prompt, canvas1, canvas2 = _inputs(6)
    ref = reference_forward(vlm_plain[f"{kind}-deq"], prompt, canvas1, canvas2)
    model, _ = load(vlm_plain[kind], dtype="float32")
    diffs = _max_diffs(ref, mlx_forward(model, prompt, canvas1, canvas2))
    assert max(diffs.values()) < ATOL, diffs
    # the reference on the float source differs (quantized kinds): the test sees the file's weights
    if kind != "bf16":
        source = reference_forward(vlm_plain["source"], prompt, canvas1, canvas2)
        assert max(_max_diffs(ref, source).values()) > 10 * ATOL


@pytest.mark.parametrize("kind", KINDS)
def test_mlx_vlm_checkpoint_default_dtype_within_bf16_error(vlm_plain, kind):
    """Loaded as stored (bf16 activations where MLX allows), against the float32 reference.

    Tolerance: the mean |logit error| over every output of two input sets must stay within twice that
    of the other bf16 runs of the same file, mlx-vlm's own model and the reference in bf16 (the larger
    of the two). bf16 keeps 8 significant bits, and these random models amplify rounding: bf16 runs of
    either library are off by up to ~0.5 on logits of scale ~0.6 (max), ~0.02-0.06 on average. The
    mean is pooled because a single max is too noisy to compare (it varies 3x between inputs for
    every implementation); a real bug (a skipped scalar, a swapped half) moves the mean by ~the logit
    scale. Where our loader runs in float32 (unquantized experts on MLX's CPU backend) the float32
    tolerance applies instead.
    """
    deq = vlm_plain[f"{kind}-deq"]
    model, _ = load(vlm_plain[kind])
    errors: dict[str, list[np.ndarray]] = {"ours": [], "mlx-vlm bf16": [], "reference bf16": []}
    for seed in (7, 8):
        prompt, canvas1, canvas2 = _inputs(seed)
        ref = reference_forward(deq, prompt, canvas1, canvas2)
        ours = mlx_forward(model, prompt, canvas1, canvas2)
        if model.dtype == mx.float32:
            assert kind == "bf16" and mx.default_device() == mx.cpu, "only the CPU gather rule upcasts"
            diffs = _max_diffs(ref, ours)
            assert max(diffs.values()) < ATOL, diffs
            continue
        assert model.dtype == mx.bfloat16
        runs = {
            "ours": ours,
            "mlx-vlm bf16": vlm_forward(load_vlm(vlm_plain[kind]), prompt, canvas1, canvas2),
            "reference bf16": reference_forward(deq, prompt, canvas1, canvas2, dtype="bfloat16"),
        }
        for name, run in runs.items():
            errors[name] += [np.abs(run[key] - ref[key]).ravel() for key in LOGIT_KEYS]
    if model.dtype == mx.float32:
        return
    mean = {name: float(np.concatenate(e).mean()) for name, e in errors.items()}
    print(f"\n{kind}: mean |logit error| against the float32 reference {mean}")
    assert mean["ours"] <= 2 * max(mean["mlx-vlm bf16"], mean["reference bf16"]), mean


# --- generation under a noise tape ----------------------------------------------------------------------


GEN = {"max_denoising_steps": 12, "eos_token_id": [1], "pad_token_id": 0, "max_new_tokens": 20}
GEN_SETTINGS = [
    # the checkpoint's own schedule: every canvas runs all 12 passes on these models
    pytest.param({"stability_threshold": 1, "confidence_threshold": 0.005}, False, id="default"),
    # huge confidence threshold + tiny temperature: adaptive stopping ends canvases early
    pytest.param(EARLY_STOP, True, id="early-stop"),
]


@pytest.mark.parametrize("kind", ["affine4", "mxfp4"])
@pytest.mark.parametrize("settings, stops_early", GEN_SETTINGS)
@pytest.mark.parametrize("seed", [0, 1])
def test_mlx_vlm_checkpoint_generation_token_exact(vlm_sharp, kind, settings, stops_early, seed):
    """Our engine on the file (float32) and the reference on its dequantized weights, one noise tape."""
    prompt = np.random.default_rng(300 + seed).integers(3, VOCAB, (2, 7))
    kwargs = {**GEN, **settings}
    ref = reference_generate(vlm_sharp[f"{kind}-deq"], prompt, seed, **kwargs)
    model, _ = load(vlm_sharp[kind], dtype="float32")
    ours = run_model(model, prompt.tolist(), ref["draws"], **kwargs)
    assert np.array_equal(ours.sequences, ref["sequences"])
    assert np.allclose(ours.stats.tokens_per_forward, ref["tokens_per_forward"], rtol=1e-6)
    full_passes = 24 / (3 * GEN["max_denoising_steps"])  # 3 canvases of 8, every pass run
    assert (ref["tokens_per_forward"] > full_passes).any() == stops_early


# --- our converter's output in mlx-vlm --------------------------------------------------------------------


OUR_SETTINGS = [
    pytest.param({}, id="default-4bit-mixed"),
    pytest.param({"mode": "mxfp4"}, id="mxfp4"),
    pytest.param({"recipe": "uniform", "bits": 8}, id="8bit-uniform"),
    pytest.param({"quantize": False}, id="bf16"),
]


@pytest.mark.parametrize("settings", OUR_SETTINGS)
def test_our_conversion_runs_in_mlx_vlm(tmp_path, vlm_plain, settings):
    """`dgemma convert` output loads in mlx-vlm and gives there the logits it gives in our model
    (it writes `"vision_config": null`: the vision tower is not converted, and mlx-vlm must not build one)."""
    import json

    from dgemma_mlx.convert import convert

    out = tmp_path / "ours"
    convert(vlm_plain["source"], out, **settings)
    assert json.loads((out / "config.json").read_text())["vision_config"] is None
    prompt, canvas1, canvas2 = _inputs(8)
    theirs = load_vlm(out)
    theirs.set_dtype(mx.float32)  # both sides in float32 on the same stored weights
    ours, _ = load(out, dtype="float32")
    diffs = _max_diffs(
        mlx_forward(ours, prompt, canvas1, canvas2), vlm_forward(theirs, prompt, canvas1, canvas2)
    )
    assert max(diffs.values()) < ATOL, diffs
