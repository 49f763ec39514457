"""Quantized products on the CPU go through dequantize + float matmul for float32 activations.

The dense path must give the quantized kernel's numbers (same dequantized weights, only the summation
order differs), keep the kernel for other activation dtypes, bound its embedding chunks, and be what a
quantized model's modules use after `quantize_model` and after loading.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from tiny_models import tiny_model

from dgemma_mlx import dequant
from dgemma_mlx.quantization import quantize_model


def _close(a: mx.array, b: mx.array) -> bool:
    return np.allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)


def _linear(dtype: mx.Dtype):
    layer = nn.Linear(128, 96, bias=True)
    mx.eval(layer.parameters())
    q = nn.QuantizedLinear.from_linear(layer, group_size=64, bits=4)
    dense = nn.QuantizedLinear.from_linear(layer, group_size=64, bits=4)
    dense.__class__ = dequant.DenseOnCPULinear
    x = mx.random.normal((1, 24, 128), key=mx.random.key(0)).astype(dtype)
    return q(x), dense(x)


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = dequant.dequantized

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(dequant, "dequantized", counted)
    return calls


def test_linear_matches_the_quantized_kernel_and_keeps_it_for_half_precision(monkeypatch):
    calls = _counting(monkeypatch)
    kernel, dense = _linear(mx.float32)
    assert _close(kernel, dense) and len(calls) == 1
    kernel, dense = _linear(mx.bfloat16)
    assert np.array_equal(np.array(kernel.astype(mx.float32)), np.array(dense.astype(mx.float32)))
    assert len(calls) == 1


def test_switch_linear_matches_gather_qmm(monkeypatch):
    calls = _counting(monkeypatch)
    layer = SwitchLinear(64, 32, num_experts=4, bias=False)
    mx.eval(layer.parameters())
    q = layer.to_quantized(group_size=32, bits=4)
    dense = layer.to_quantized(group_size=32, bits=4)
    dense.__class__ = dequant.DenseOnCPUSwitchLinear
    x = mx.random.normal((24, 1, 1, 64), key=mx.random.key(1))
    idx = mx.random.randint(0, 4, (24, 2), key=mx.random.key(2))
    assert _close(q(x, idx), dense(x, idx)) and calls


def test_embedding_products_match_in_chunks(monkeypatch):
    table = nn.Embedding(200, 64)
    mx.eval(table.parameters())
    q = nn.QuantizedEmbedding.from_embedding(table, group_size=32, bits=8)
    dense = nn.QuantizedEmbedding.from_embedding(table, group_size=32, bits=8)
    dense.__class__ = dequant.DenseOnCPUEmbedding
    calls = _counting(monkeypatch)
    monkeypatch.setattr(dequant, "CHUNK_VALUES", 64 * 60)  # 60 rows a chunk: 4 chunks, the last short
    assert len(dequant._row_chunks(dense)) == 4
    h = mx.random.normal((1, 20, 64), key=mx.random.key(3))
    assert _close(q.as_linear(h), dense.as_linear(h))
    probs = mx.softmax(mx.random.normal((1, 20, 200), key=mx.random.key(4)), axis=-1)
    kernel = mx.quantized_matmul(probs, q.weight, q.scales, q.biases, transpose=False, group_size=32, bits=8)
    assert _close(kernel, dense.mix(probs)) and len(calls) == 8


def test_quantized_models_get_the_dispatch():
    model = tiny_model(vocab_size=64)
    quantize_model(model, bits=4, group_size=32, recipe="mixed")
    layer = model.model.decoder.layers[0]
    assert isinstance(layer.experts.switch_glu.gate_proj, dequant.DenseOnCPUSwitchLinear)
    assert isinstance(layer.experts.switch_glu.gate_proj, QuantizedSwitchLinear)
    assert isinstance(layer.self_attn.q_proj, dequant.DenseOnCPULinear)
    assert isinstance(model.model.decoder.embed_tokens, dequant.DenseOnCPUEmbedding)
    assert not isinstance(layer.router.proj, nn.QuantizedLinear)
