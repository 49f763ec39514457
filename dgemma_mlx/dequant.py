"""Quantized products on the CPU: dequantize the weight, then one float matmul.

MLX's CPU backend multiplies by a quantized matrix with a generic loop; at a canvas pass's shapes that is
~20x slower than dequantizing the weight (one sweep over it) and calling the BLAS float matmul (measured
in docs/ARCHITECTURE.md, "Quantized products on the CPU"). The GPU backends have fast quantized kernels,
so there nothing changes: each quantized module here answers with MLX's own kernel unless the default
device is the CPU and the activations are float32 (the CPU's default). Every product of a canvas pass
has a canvas's rows, where dequantizing once costs far less than the kernel saves.

The weights stay quantized in memory; the float copy is a per-call temporary, made in vocabulary chunks
of at most `CHUNK_VALUES` values for the embedding, so its transient memory stays bounded at the released
geometry. Results equal the quantized kernel's up to float summation order: the dequantized values are
the same numbers the kernel multiplies by.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.switch_layers import QuantizedSwitchLinear

CHUNK_VALUES = 1 << 25  # embedding values dequantized at once (128 MB in float32)


def dense_here(x: mx.array) -> bool:
    """Whether a product with float32 activations `x` should dequantize first: on the CPU only.

    Not by row count: a row's result must not depend on how many rows share its batch (the server's
    joined rows are bit-exact with their lone runs), and every product of a canvas pass has many rows.
    Other activation dtypes keep the quantized kernel (the CPU's `gather_mm` takes float32 only, and a
    half-precision float matmul would round differently from the kernel).
    """
    return x.dtype == mx.float32 and mx.default_device() == mx.cpu


def dequantized(module: nn.Module, start: int = 0, stop: int | None = None) -> mx.array:
    """A quantized module's float weight (rows `start:stop` of its leading axis), in its scales' dtype."""
    biases = module.get("biases")
    return mx.dequantize(
        module.weight[start:stop],
        module.scales[start:stop],
        None if biases is None else biases[start:stop],
        group_size=module.group_size,
        bits=module.bits,
        mode=module.mode,
    )


def _row_chunks(module: nn.Module) -> list[tuple[int, int]]:
    rows, packed = module.weight.shape
    step = max(1, CHUNK_VALUES // (packed * 32 // module.bits))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


class DenseOnCPULinear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if not dense_here(x):
            return super().__call__(x)
        y = x @ dequantized(self).astype(x.dtype).T
        return y + self.bias if "bias" in self else y


class DenseOnCPUSwitchLinear(QuantizedSwitchLinear):
    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        if not dense_here(x):
            return super().__call__(x, indices, sorted_indices)
        w = dequantized(self).astype(x.dtype).swapaxes(-1, -2)
        y = mx.gather_mm(x, w, rhs_indices=indices, sorted_indices=sorted_indices)
        return y + mx.expand_dims(self["bias"][indices], -2) if "bias" in self else y


class DenseOnCPUEmbedding(nn.QuantizedEmbedding):
    def as_linear(self, x: mx.array) -> mx.array:
        """x @ E^T (the tied LM head), by vocabulary chunks."""
        if not dense_here(x):
            return super().as_linear(x)
        parts = [x @ dequantized(self, a, b).astype(x.dtype).T for a, b in _row_chunks(self)]
        return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)

    def mix(self, probs: mx.array) -> mx.array:
        """probs @ E (self-conditioning's soft embedding), by vocabulary chunks."""
        if not dense_here(probs):
            return mx.quantized_matmul(
                probs,
                self.weight,
                self.scales,
                self.get("biases"),
                transpose=False,
                group_size=self.group_size,
                bits=self.bits,
                mode=self.mode,
            )
        out = None
        for a, b in _row_chunks(self):
            part = probs[..., a:b] @ dequantized(self, a, b).astype(probs.dtype)
            out = part if out is None else out + part
        return out


_DENSE = {
    nn.QuantizedLinear: DenseOnCPULinear,
    QuantizedSwitchLinear: DenseOnCPUSwitchLinear,
    nn.QuantizedEmbedding: DenseOnCPUEmbedding,
}


def adopt(model: nn.Module) -> None:
    """Give every quantized module of `model` the dispatch above (in place: same arrays, same names)."""
    for _, module in model.named_modules():
        dense = _DENSE.get(type(module))
        if dense is not None:
            module.__class__ = dense
