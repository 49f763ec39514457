"""Where the sampler's randomness comes from.

Block diffusion draws two kinds of noise: uniform token ids (the initial canvas and every renoise,
draw "C") and the noise of each pass's categorical sample (draw "S"). Keeping both behind one small
interface lets tests replay exactly the draws another implementation consumed (a *tape*), which is
how we prove token-for-token parity with the reference (docs/ARCHITECTURE.md, "Tests and benchmarks").

The sample noise comes in one of two forms, and the sampler takes either (`sampler.tempered_scores`):
- one uniform per position, [B, L]: our own sources. A categorical sample needs no more than that
  (inverse CDF over the probabilities the sampler computes anyway), so no [B, L, V] draw per pass;
- a Gumbel draw per vocabulary entry, [B, L, V]: the reference's formula, argmax(log p + g), which is
  what a tape recorded from transformers replays.
Both are exact samples from the same distribution; only the mapping from random bits to tokens differs.

Our source keeps one stream per row (`RowStream`): row b of a generation seeded s draws from seed s + b,
so a row's tokens never depend on which other rows share its batch (batch jobs, a server's joined
requests, ranks of a data-parallel run all reproduce the row's lone run with that seed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import mlx.core as mx
import numpy as np

CANVAS = "C"
GUMBEL = "S"


Live = np.ndarray | None  # [B] bool: the rows whose result this draw can still change (None: all)


class NoiseSource(Protocol):
    """The two draws the sampler makes, in the order it makes them.

    `live` names the rows that use the draw; a source may leave the others' streams untouched (and
    return anything in their rows). A tape ignores it: the reference draws for every row.
    """

    def canvas(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        """Uniform token ids in [0, vocab_size), int32 of shape [batch, length]."""
        ...

    def sample_noise(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        """The categorical sample's noise: float32 uniforms [batch, length] in [0, 1), or standard
        Gumbel noise [batch, length, vocab_size] (see the module docstring)."""
        ...


class RowStream:
    """One row's random stream: a key split once per draw, or MLX's global RNG when unseeded."""

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._key = mx.random.key(int(seed)) if seed is not None else None

    def next_key(self) -> mx.array | None:
        if self._key is None:
            return None
        self._key, sub = mx.random.split(self._key)
        return sub


class MLXNoise:
    """Default source: MLX's counter-based RNG on device, one `RowStream` per row.

    `MLXNoise(seed)` gives row b the stream of seed `seed + b` (created at the first draw, when the
    batch size is known); `MLXNoise.from_streams` takes streams a caller keeps per request, so a row
    can move between batches and keep drawing where it left off. A row that is not live (stopped on
    this canvas, or finished) draws nothing, so its stream stays where its lone run would leave it.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self.streams: list[RowStream] | None = None

    @classmethod
    def from_streams(cls, streams: Sequence[RowStream]) -> MLXNoise:
        source = cls()
        source.streams = list(streams)
        return source

    def _keys(self, batch: int, live: Live) -> list[mx.array | None] | None:
        """One key per live row (None for a row off the stream); None when every row is unseeded."""
        if self.streams is None:
            first = self.seed
            self.streams = [RowStream(None if first is None else first + b) for b in range(batch)]
        if len(self.streams) != batch:
            raise ValueError(f"noise has {len(self.streams)} row streams, the sampler asked for {batch} rows")
        if all(stream.seed is None for stream in self.streams):
            return None
        return [s.next_key() if live is None or live[b] else None for b, s in enumerate(self.streams)]

    def _per_row(self, batch: int, live: Live, draw, dead) -> mx.array:
        keys = self._keys(batch, live)
        if keys is None:
            return draw(batch, None)
        rows = [draw(1, k) if live is None or live[b] else dead for b, k in enumerate(keys)]
        return mx.concatenate(rows, axis=0)

    def canvas(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        def draw(rows: int, key: mx.array | None) -> mx.array:
            return mx.random.randint(0, vocab_size, (rows, length), dtype=mx.int32, key=key)

        return self._per_row(batch, live, draw, mx.zeros((1, length), dtype=mx.int32))

    def sample_noise(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        def draw(rows: int, key: mx.array | None) -> mx.array:
            return mx.random.uniform(shape=(rows, length), key=key)

        return self._per_row(batch, live, draw, mx.zeros((1, length)))


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

    def canvas(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        return mx.array(self.canvas_np(batch, length, vocab_size).astype(np.int32))

    def gumbel(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        return mx.array(self.gumbel_np(batch * length, vocab_size).reshape(batch, length, vocab_size))

    sample_noise = gumbel  # the reference's form, so a recording replays on torch and on MLX


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

    def canvas(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        return mx.array(self._pop(CANVAS, (batch, length)).astype(np.int32))

    def gumbel(self, batch: int, length: int, vocab_size: int, live: Live = None) -> mx.array:
        return mx.array(self._pop(GUMBEL, (batch, length, vocab_size)).astype(np.float32))

    sample_noise = gumbel

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
