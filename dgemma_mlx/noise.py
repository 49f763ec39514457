"""Where the sampler's randomness comes from.

Block diffusion draws two kinds of noise: uniform token ids (the initial canvas and every renoise,
draw "C") and Gumbel noise for the categorical sample of each pass (draw "S"). Keeping both behind
one small interface lets tests replay exactly the draws another implementation consumed (a *tape*),
which is how we prove token-for-token parity with the reference (docs/ARCHITECTURE.md, "Tests and
benchmarks").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import numpy as np

CANVAS = "C"
GUMBEL = "S"


class NoiseSource(Protocol):
    """The two draws the sampler makes, in the order it makes them."""

    def canvas(self, batch: int, length: int, vocab_size: int) -> mx.array:
        """Uniform token ids in [0, vocab_size), int32 of shape [batch, length]."""
        ...

    def gumbel(self, batch: int, length: int, vocab_size: int) -> mx.array:
        """Standard Gumbel noise, float32 of shape [batch, length, vocab_size]."""
        ...


class MLXNoise:
    """Default source: MLX's counter-based RNG, so the draws stay on device and are reproducible by seed."""

    def __init__(self, seed: int | None = None):
        self._key = mx.random.key(int(seed)) if seed is not None else None

    def _next_key(self) -> mx.array | None:
        if self._key is None:
            return None
        self._key, sub = mx.random.split(self._key)
        return sub

    def canvas(self, batch: int, length: int, vocab_size: int) -> mx.array:
        return mx.random.randint(0, vocab_size, (batch, length), dtype=mx.int32, key=self._next_key())

    def gumbel(self, batch: int, length: int, vocab_size: int) -> mx.array:
        return mx.random.gumbel((batch, length, vocab_size), dtype=mx.float32, key=self._next_key())


class NumpyNoise:
    """Draws on demand from numpy's `default_rng(seed)` and records each draw in `.draws`.

    Implementation-neutral noise: the reference side (torch) and our side can both consume it, and a
    recording from one run replays exactly on the other through `TapeNoise`.
    """

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.draws: list[tuple[str, np.ndarray]] = []

    def canvas_np(self, batch: int, length: int, vocab_size: int) -> np.ndarray:
        value = self.rng.integers(0, vocab_size, size=(batch, length), dtype=np.int64)
        self.draws.append((CANVAS, value))
        return value

    def gumbel_np(self, rows: int, vocab_size: int) -> np.ndarray:
        u = self.rng.random(size=(rows, vocab_size))
        u = np.clip(u, np.finfo(np.float64).tiny, 1.0 - 1e-16)
        value = (-np.log(-np.log(u))).astype(np.float32)
        self.draws.append((GUMBEL, value))
        return value

    def canvas(self, batch: int, length: int, vocab_size: int) -> mx.array:
        return mx.array(self.canvas_np(batch, length, vocab_size).astype(np.int32))

    def gumbel(self, batch: int, length: int, vocab_size: int) -> mx.array:
        return mx.array(self.gumbel_np(batch * length, vocab_size).reshape(batch, length, vocab_size))


class TapeExhausted(RuntimeError):
    """Raised when a replay asks for more draws than the tape recorded."""


class TapeNoise:
    """Replays a recorded sequence of draws, checking kind and shape of every one.

    A mismatch means the two implementations disagree on draw order, which is itself a parity bug,
    so it fails loudly instead of silently reshaping.
    """

    def __init__(self, draws: Iterable[tuple[str, np.ndarray]]):
        self.draws: list[tuple[str, np.ndarray]] = list(draws)
        self.position = 0

    def _pop(self, kind: str, shape: Sequence[int]) -> np.ndarray:
        if self.position >= len(self.draws):
            raise TapeExhausted(f"noise tape exhausted after {self.position} draws (wanted {kind})")
        got_kind, value = self.draws[self.position]
        if got_kind != kind:
            raise ValueError(f"noise tape draw {self.position} is {got_kind!r}, sampler asked for {kind!r}")
        value = np.asarray(value)
        if int(np.prod(value.shape)) != int(np.prod(shape)):
            raise ValueError(
                f"noise tape draw {self.position} has shape {value.shape}, wanted {tuple(shape)}"
            )
        self.position += 1
        return value.reshape(tuple(shape))

    def canvas(self, batch: int, length: int, vocab_size: int) -> mx.array:
        return mx.array(self._pop(CANVAS, (batch, length)).astype(np.int32))

    def gumbel(self, batch: int, length: int, vocab_size: int) -> mx.array:
        return mx.array(self._pop(GUMBEL, (batch, length, vocab_size)).astype(np.float32))

    def remaining(self) -> int:
        return len(self.draws) - self.position

    def save(self, path: str | Path) -> None:
        arrays = {f"{i:06d}_{kind}": value for i, (kind, value) in enumerate(self.draws)}
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> TapeNoise:
        with np.load(path) as data:
            names = sorted(data.files)
            return cls((name.rsplit("_", 1)[1], data[name]) for name in names)
