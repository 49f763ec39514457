"""Checkpoints in the public (mlx-vlm / HF key tree) layout load as the files say, or fail in one line.

Each checkpoint here is written from a tiny random model of our own tree: its weights are renamed to
the public layout (experts fused as `gate_up_proj`, gate rows first) and saved with an mlx-vlm-style
`quantization` block (top-level defaults, per-module entries keyed by public module path and without
`mode`). Loading it must give exactly the logits of the model it was written from.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hf_reference import QUANTIZABLE_TEXT
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from test_loading import first_logits, single_line_error
from tiny_models import TINY_GEOMETRY, random_model, write_word_tokenizer

from dgemma_mlx import load
from dgemma_mlx.layout import public_module, public_name
from dgemma_mlx.loading import load_model
from dgemma_mlx.quantization import weight_class

CONFIG = {
    "model_type": "diffusion_gemma",
    "canvas_length": 8,
    "text_config": {**TINY_GEOMETRY, **QUANTIZABLE_TEXT, "vocab_size": 64, "sliding_window": 4},
}
LAYER0 = "model.decoder.layers.0"
VISION = {
    # Garbage on purpose: wrong dtypes and shapes no model expects. They must never be read.
    "model.encoder.vision_tower.encoder.layers.0.mlp.fc1.weight": mx.zeros((3, 5), mx.int8),
    "model.encoder.embed_vision.embedding_projection.weight": mx.zeros((7,), mx.uint8),
}


def quantized_model(experts: dict, others: dict | None) -> tuple[nn.Module, dict]:
    """A random model quantized as mlx-vlm would: experts at the defaults, the rest by per-module entry.

    Returns the model and its config `quantization` block (public module paths, entries without mode).
    """
    model = random_model(CONFIG, seed=3)
    block = dict(experts)

    def predicate(path: str, module: nn.Module):
        if not hasattr(module, "to_quantized"):
            return False
        if weight_class(path) == "experts":
            return dict(experts)
        if others is None:
            return False
        block[public_module(path)] = dict(others)
        return dict(others)

    nn.quantize(model, class_predicate=predicate)
    mx.eval(model.parameters())
    return model, block


def public_weights(model: nn.Module) -> dict[str, mx.array]:
    """Our tree's parameters under public names: expert gate and up fused (gate rows first)."""
    flat = dict(tree_flatten(model.parameters()))
    out = {}
    for key, value in flat.items():
        if ".switch_glu.up_proj." in key:
            continue
        if ".switch_glu.gate_proj." in key:
            up = flat[key.replace(".gate_proj.", ".up_proj.")]
            value = mx.concatenate([value, up], axis=-2)
        out[public_name(key)] = value
    return out


def write_public(path: Path, weights: dict[str, mx.array], block: dict | None) -> Path:
    """Two shards and an index (the second shard vision-only, as large conversions have), configs."""
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path / "model-00001-of-00002.safetensors"), weights)
    vision_only = {"model.vision_tower.x": mx.ones((2,))}
    mx.save_safetensors(str(path / "model-00002-of-00002.safetensors"), vision_only)
    weight_map = dict.fromkeys(weights, "model-00001-of-00002.safetensors")
    weight_map["model.vision_tower.x"] = "model-00002-of-00002.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    config = {**CONFIG, "vision_config": {"hidden_size": 8}}
    if block is not None:
        config |= {"quantization": block, "quantization_config": block}
    (path / "config.json").write_text(json.dumps(config))
    return path


AFFINE4 = {"group_size": 32, "bits": 4, "mode": "affine"}
MXFP4 = {"group_size": 32, "bits": 4, "mode": "mxfp4"}
EIGHT = {"bits": 8, "group_size": 32}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (reference model, public weights, quantization block)."""
    out = {"float": (random_model(CONFIG, seed=3), None)}
    mx.eval(out["float"][0].parameters())
    out["affine4"] = quantized_model(AFFINE4, EIGHT)
    out["mxfp4"] = quantized_model(MXFP4, EIGHT)
    return {k: (m, {**public_weights(m), **VISION}, b) for k, (m, b) in out.items()}


@pytest.mark.parametrize("name", ["float", "affine4", "mxfp4"])
def test_public_layout_loads_with_the_same_logits(tmp_path, checkpoints, name):
    reference, weights, block = checkpoints[name]
    assert f"{LAYER0}.experts.gate_up_proj.weight" in weights
    loaded = load_model(write_public(tmp_path / name, weights, block), dtype="float32")[0]
    assert np.array_equal(first_logits(loaded), first_logits(reference))
    experts = loaded.model.decoder.layers[0].experts.switch_glu
    attention = loaded.model.decoder.layers[0].self_attn.q_proj
    if name == "float":
        assert not isinstance(experts.gate_proj, QuantizedSwitchLinear)
        return
    # As the files say: experts at the top-level defaults, the rest by their mode-less (affine) entries.
    assert isinstance(experts.gate_proj, QuantizedSwitchLinear) and experts.down_proj.mode == block["mode"]
    assert (attention.bits, attention.group_size, attention.mode) == (8, 32, "affine")
    assert not any("vision" in k for k, _ in tree_flatten(loaded.parameters()))


def test_vision_shards_are_never_opened(tmp_path, checkpoints, monkeypatch):
    _, weights, block = checkpoints["affine4"]
    path = write_public(tmp_path / "v", weights, block)
    opened = []
    real_load = mx.load
    monkeypatch.setattr(mx, "load", lambda f, *a, **k: opened.append(Path(f).name) or real_load(f, *a, **k))
    load_model(path, lazy=True)
    assert opened == ["model-00001-of-00002.safetensors"]


def test_our_tree_names_with_public_block_load(tmp_path, checkpoints):
    """Our older converted layout (switch_glu names) keeps loading, whichever way entries are keyed."""
    reference, _, block = checkpoints["affine4"]
    path = tmp_path / "ours"
    path.mkdir()
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(reference.parameters())))
    (path / "config.json").write_text(json.dumps({**CONFIG, "quantization": block}))
    assert np.array_equal(first_logits(load_model(path)[0]), first_logits(reference))


def broken(tmp_path, checkpoints, name, edit_weights=None, edit_block=None) -> Path:
    _, weights, block = checkpoints[name]
    weights, block = dict(weights), json.loads(json.dumps(block))
    if edit_weights:
        edit_weights(weights)
    if edit_block:
        edit_block(block)
    return write_public(tmp_path / "broken", weights, block)


Q = f"{LAYER0}.self_attn.q_proj"
FUSED = f"{LAYER0}.experts.gate_up_proj"


def test_scales_of_the_wrong_width(tmp_path, checkpoints):
    def halve(w):
        w[f"{Q}.scales"] = w[f"{Q}.scales"][:, ::2]

    path = broken(tmp_path, checkpoints, "affine4", halve)
    single_line_error(lambda: load(path), "model-00001-of-00002.safetensors", f"{Q}.scales", "group size 64")


def test_per_module_entry_that_disagrees_with_the_tensors(tmp_path, checkpoints):
    def four_bits(block):
        block[Q] = {"bits": 4, "group_size": 32}

    path = broken(tmp_path, checkpoints, "affine4", edit_block=four_bits)
    single_line_error(lambda: load(path), f"{Q}.weight", "8 bits", "config.json says 4-bit")


def test_quantized_module_the_config_leaves_in_float(tmp_path, checkpoints):
    def unquantize(block):
        block[Q] = False

    path = broken(tmp_path, checkpoints, "affine4", edit_block=unquantize)
    single_line_error(lambda: load(path), f"{Q}.scales", "leaves it in float")


@pytest.mark.parametrize("rows", [30, 31])
def test_fused_expert_tensor_of_the_wrong_height(tmp_path, checkpoints, rows):
    def cut(w):
        for part in ("weight", "scales", "biases"):
            w[f"{FUSED}.{part}"] = w[f"{FUSED}.{part}"][:, :rows]

    path = broken(tmp_path, checkpoints, "affine4", cut)
    expected = "model expects (4, 64," if rows % 2 == 0 else "31 rows"
    single_line_error(lambda: load(path), f"{FUSED}.", expected)


def test_biases_present_in_mxfp4(tmp_path, checkpoints):
    def add_biases(w):
        w[f"{FUSED}.biases"] = mx.zeros(w[f"{FUSED}.scales"].shape, mx.float32)

    path = broken(tmp_path, checkpoints, "mxfp4", add_biases)
    single_line_error(lambda: load(path), f"{FUSED}.biases", "stores biases", "mxfp4")


def test_biases_missing_in_affine(tmp_path, checkpoints):
    def drop_biases(w):
        del w[f"{Q}.biases"]

    path = broken(tmp_path, checkpoints, "affine4", drop_biases)
    single_line_error(lambda: load(path), f"{Q}.scales", "has no biases", "affine")


def test_scales_without_any_quantization_block(tmp_path, checkpoints):
    _, weights, _ = checkpoints["affine4"]
    path = write_public(tmp_path / "noblock", weights, None)
    single_line_error(lambda: load(path), ".scales is stored", "no quantization")


def test_chat_template_jinja_next_to_tokenizer_json(tmp_path, checkpoints):
    """mlx-vlm conversions keep the template as its own file, not in tokenizer_config.json."""
    reference, weights, block = checkpoints["float"]
    path = write_public(tmp_path / "chat", weights, block)
    write_word_tokenizer(path)  # tokenizer.json, tokenizer_config.json (no template), chat_template.jinja
    assert "chat_template" not in json.loads((path / "tokenizer_config.json").read_text())
    _, tokenizer = load(path, lazy=True)
    assert tokenizer.has_chat_template
    ids = tokenizer.render_chat([{"role": "user", "content": "hello"}])
    assert ids[:2] == [2, 105] and ids.count(106) == 1  # <bos><|turn>user hello<turn|><|turn>model


def test_info_reports_storage_per_weight_class_and_the_unloaded_vision_tower(tmp_path, checkpoints):
    from dgemma_mlx.inspect import format_summary, summarize

    _, weights, block = checkpoints["mxfp4"]
    summary = summarize(write_public(tmp_path / "q", weights, block))
    assert summary["quantization_by_class"] == {
        "experts": "4-bit mxfp4 g32",
        "attention": "8-bit affine g32",
        "dense_mlp": "8-bit affine g32",
        "self_conditioning": "8-bit affine g32",
        "embedding": "8-bit affine g32",
        "router": "8-bit affine g32",
    }
    assert summary["vision_tower"]["tensors"] == 3  # two in the main shard, one in the vision-only shard
    text = format_summary(summary)
    assert "experts 4-bit mxfp4 g32" in text and "present (3 tensors" in text and "not loaded" in text

    _, weights, _ = checkpoints["float"]
    float_summary = summarize(write_public(tmp_path / "f", weights, None))
    assert float_summary["quantization"] is None
    assert set(float_summary["quantization_by_class"].values()) == {"float"}
