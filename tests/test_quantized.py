"""4-bit models against the reference run on their own dequantized weights.

Comparing with the dequantized weights isolates our implementation from quantization error, so
the tolerance stays at float32 level. The quantization error itself is reported (top-1 agreement
and KL against the float model), not asserted.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hf_reference import QUANTIZABLE_TEXT, reference_forward, write_tiny_checkpoint
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear
from test_parity import ATOL, mlx_forward

from dgemma_mlx.loading import load_model
from dgemma_mlx.quantization import quantize_model


def dequantized_hf_weights(model) -> dict[str, np.ndarray]:
    """Our (partly quantized) parameters as float32 numpy arrays under HF checkpoint names."""
    out: dict[str, np.ndarray] = {}
    quantized = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear | nn.QuantizedEmbedding | QuantizedSwitchLinear):
            w = mx.dequantize(
                module.weight,
                module.scales,
                module.get("biases"),
                module.group_size,
                module.bits,
                mode=module.mode,
            )
            quantized[path] = np.array(w.astype(mx.float32))
    for key, value in tree_flatten(model.parameters()):
        base = key.rsplit(".", 1)[0]
        if base in quantized:
            if key.endswith(".weight"):
                out[key] = quantized[base]
            continue
        out[key] = np.array(value.astype(mx.float32))
    for key in [k for k in out if k.endswith("switch_glu.gate_proj.weight")]:
        layer = key.removesuffix(".switch_glu.gate_proj.weight")
        gate, up = out.pop(key), out.pop(f"{layer}.switch_glu.up_proj.weight")
        out[f"{layer}.gate_up_proj"] = np.concatenate([gate, up], axis=-2)
        out[f"{layer}.down_proj"] = out.pop(f"{layer}.switch_glu.down_proj.weight")
    return out


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("q"), seed=4, text_overrides=QUANTIZABLE_TEXT)


@pytest.mark.parametrize("bits, recipe", [(4, "uniform"), (4, "mixed"), (8, "uniform")])
def test_quantized_model_matches_reference_on_dequantized_weights(tmp_path, float_checkpoint, bits, recipe):
    from hf_reference import dequantized_to_hf

    rng = np.random.default_rng(5)
    prompt = rng.integers(0, 128, (2, 7))
    canvas1, canvas2 = rng.integers(0, 128, (2, 8)), rng.integers(0, 128, (2, 8))

    model = load_model(float_checkpoint)[0]
    float_out = mlx_forward(model, prompt, canvas1, canvas2)
    block = quantize_model(model, bits=bits, group_size=32, recipe=recipe)
    assert block["model.decoder.layers.0.experts.switch_glu.gate_proj"]["bits"] == bits
    assert block["model.decoder.layers.0.router.proj"] is False  # the router always stays in float
    ours = mlx_forward(model, prompt, canvas1, canvas2)

    deq_dir = dequantized_to_hf(tmp_path / "deq", dequantized_hf_weights(model), float_checkpoint)
    ref = reference_forward(deq_dir, prompt, canvas1, canvas2)
    for key in ("logits_first", "logits_sc", "logits_second"):
        assert np.abs(ref[key] - ours[key]).max() < ATOL, key

    # Report (not assert) the quantization drift against the float model.
    q, f = ours["logits_sc"].reshape(-1, 128), float_out["logits_sc"].reshape(-1, 128)
    top1 = (q.argmax(-1) == f.argmax(-1)).mean()
    log_pf = f - np.logaddexp.reduce(f, axis=-1, keepdims=True)
    log_pq = q - np.logaddexp.reduce(q, axis=-1, keepdims=True)
    kl = (np.exp(log_pf) * (log_pf - log_pq)).sum(-1).mean()
    print(f"\n{bits}-bit {recipe}: top-1 agreement with float {top1:.1%}, KL(float||quant) {kl:.2e} nats")


def test_quantized_directory_round_trips_through_load(tmp_path, float_checkpoint):
    """A converted MLX directory (packed weights + `quantization` map in config.json) loads back exactly."""
    import json

    from dgemma_mlx import load

    model = load_model(float_checkpoint)[0]
    block = quantize_model(model, bits=4, group_size=32, recipe="mixed")
    out = tmp_path / "mlx4"
    out.mkdir()
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    config = json.loads((float_checkpoint / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "quantization": block}))
    loaded, _ = load(out)
    assert isinstance(loaded.model.decoder.layers[0].experts.switch_glu.gate_proj, QuantizedSwitchLinear)
    assert not isinstance(loaded.model.decoder.layers[0].router.proj, nn.QuantizedLinear)
    rng = np.random.default_rng(6)
    prompt, c1, c2 = rng.integers(0, 128, (1, 7)), rng.integers(0, 128, (1, 8)), rng.integers(0, 128, (1, 8))
    a, b = mlx_forward(model, prompt, c1, c2), mlx_forward(loaded, prompt, c1, c2)
    assert np.array_equal(a["logits_sc"], b["logits_sc"])
