"""The released 26B-A4B geometry, built lazily (no weights materialised): shapes, counts, footprint."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from test_config import released

from dgemma_mlx.config import ModelConfig, estimate_runtime_bytes, estimate_weight_bytes, parameter_counts
from dgemma_mlx.model import Model
from dgemma_mlx.quantization import quantize_model

GB = 1e9


@pytest.fixture(scope="module")
def real_model():
    model = Model(ModelConfig.from_dict(released()))
    model.set_dtype(mx.bfloat16)
    return model


def test_module_tree_has_the_released_shapes(real_model):
    params = dict(tree_flatten(real_model.parameters()))
    d = "model.decoder.layers"
    assert params[f"{d}.0.self_attn.q_proj.weight"].shape == (4096, 2816)
    assert params[f"{d}.0.self_attn.v_proj.weight"].shape == (2048, 2816)
    assert params[f"{d}.5.self_attn.q_proj.weight"].shape == (8192, 2816)
    assert params[f"{d}.5.self_attn.k_proj.weight"].shape == (1024, 2816)
    assert f"{d}.5.self_attn.v_proj.weight" not in params  # K = V on full layers
    assert params[f"{d}.3.experts.switch_glu.gate_proj.weight"].shape == (128, 704, 2816)
    assert params[f"{d}.3.experts.switch_glu.down_proj.weight"].shape == (128, 2816, 704)
    assert params["model.decoder.embed_tokens.weight"].shape == (262144, 2816)
    assert params["model.encoder.language_model.layers.29.layer_scalar"].shape == (1,)


def test_parameter_counts_match_the_published_totals(real_model):
    built = sum(v.size for _, v in tree_flatten(real_model.parameters()))
    counts = parameter_counts(real_model.text)
    assert built == counts["total"]
    print(f"\nreal geometry: {built / GB:.2f}B total, {counts['active'] / GB:.2f}B active per token")
    assert built / GB == pytest.approx(25.2, abs=0.1)
    assert counts["active"] / GB == pytest.approx(3.8, abs=0.1)


def test_four_bit_footprint_fits_an_18_gb_budget(real_model):
    quantize_model(real_model, bits=4, group_size=64, recipe="mixed")
    weights = sum(v.nbytes for _, v in tree_flatten(real_model.parameters()))
    estimate = estimate_weight_bytes(real_model.text, bits=4, other_bits=8)
    runtime = estimate_runtime_bytes(real_model.text, canvas_length=256, context=4096)
    print(
        f"\n4-bit (mixed recipe) weights {weights / GB:.2f} GB, runtime {runtime / GB:.2f} GB at 4k context"
    )
    assert weights == pytest.approx(estimate, rel=0.01)
    assert weights + runtime < 18 * GB
