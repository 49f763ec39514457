"""A faster GELU for training on MLX's CPU backend; inference always runs the unmodified model.

On the CPU the transcendental functions dominate a step of this tiny model (training/sudoku/TRAINING.md,
"Training speed"). `fast_kernels()` swaps, for training only, mlx-lm's GEGLU for a rational tanh
approximation with a hand-written backward (max abs error ~1e-4 against the exact GELU, invisible to
the model).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import mlx.core as mx

_C = math.sqrt(2.0 / math.pi)


@mx.compile
def _tanh(u: mx.array) -> mx.array:
    """Padé [7/6] tanh, clipped where it stops being accurate; |error| < 1e-4, all mults and one divide."""
    u = mx.clip(u, -4.97, 4.97)
    u2 = u * u
    num = u * (135135.0 + u2 * (17325.0 + u2 * (378.0 + u2)))
    den = 135135.0 + u2 * (62370.0 + u2 * (3150.0 + u2 * 28.0))
    return mx.clip(num / den, -1.0, 1.0)


@mx.compile
def _geglu_fwd(gate: mx.array, x: mx.array) -> mx.array:
    t = _tanh(_C * (gate + 0.044715 * gate * gate * gate))
    return 0.5 * gate * (1.0 + t) * x


@mx.compile
def _geglu_bwd(gate: mx.array, x: mx.array, ct: mx.array) -> tuple[mx.array, mx.array]:
    t = _tanh(_C * (gate + 0.044715 * gate * gate * gate))
    act = 0.5 * gate * (1.0 + t)
    dact = 0.5 * (1.0 + t) + 0.5 * gate * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * gate * gate)
    return ct * x * dact, ct * act


@mx.custom_function
def fast_geglu(gate: mx.array, x: mx.array) -> mx.array:
    """gelu_approx(gate) * x with a cheap tanh; the explicit VJP avoids autodiff's many temporaries."""
    return _geglu_fwd(gate, x)


@fast_geglu.vjp
def _fast_geglu_vjp(primals, cotangent, output):
    gate, x = primals
    return _geglu_bwd(gate, x, cotangent)


@contextlib.contextmanager
def fast_kernels() -> Iterator[None]:
    """Within the block, mlx-lm's Gemma 4 MLPs and experts use `fast_geglu` (training only)."""
    from mlx_lm.models import gemma4_text

    original = gemma4_text.geglu
    gemma4_text.geglu = fast_geglu
    try:
        yield
    finally:
        gemma4_text.geglu = original
