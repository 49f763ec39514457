"""Sudoku's symmetries: relabel the digits, move rows within bands, bands, columns within stacks,
stacks, and transpose. Each maps a puzzle to one with the same number of solutions.

Training draws one per example (augmentation). Solving uses them too: the model is not exactly
invariant under them, so a puzzle it gets wrong is often one it gets right when it sees a
transformed copy, and the copy's answer maps back to the puzzle as given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import tokens as T


@dataclass(frozen=True)
class Symmetry:
    """`apply(grid)[i] == digits[grid[cells[i]]]`: a digit relabelling after a cell permutation."""

    digits: tuple[int, ...]  # 10 entries, digits[0] == 0 (blanks stay blank)
    cells: tuple[int, ...]  # 81 entries: the source cell of each target cell

    @classmethod
    def identity(cls) -> Symmetry:
        return cls(tuple(range(10)), tuple(range(81)))

    @classmethod
    def random(cls, rng: np.random.Generator) -> Symmetry:
        # The order of the draws is part of the training data stream: keep it, or runs stop reproducing.
        digits = np.concatenate([[0], rng.permutation(9) + 1])
        bands = rng.permutation(3)
        rows = np.concatenate([b * 3 + rng.permutation(3) for b in bands])
        stacks = rng.permutation(3)
        cols = np.concatenate([s * 3 + rng.permutation(3) for s in stacks])
        transpose = rng.random() < 0.5
        cells = (rows[:, None] * 9 + cols[None, :]).reshape(81)
        if transpose:
            cells = cells.reshape(9, 9).T.reshape(81)
        return cls(tuple(int(d) for d in digits), tuple(int(c) for c in cells))

    def apply(self, grid: Sequence[int]) -> np.ndarray:
        """The transformed grid (digits 0-9, 0 for blanks)."""
        return np.asarray(self.digits)[np.asarray(grid)[list(self.cells)]]

    def invert(self, grid: Sequence[int]) -> np.ndarray:
        """The grid this symmetry maps onto `grid`: `invert(apply(g)) == g`."""
        return self.unpermute(np.argsort(self.digits)[np.asarray(grid)])

    def unpermute(self, values: np.ndarray) -> np.ndarray:
        """Per-cell values (last axis 81) of a transformed grid, moved back to the cells they came from."""
        out = np.empty_like(values)
        out[..., list(self.cells)] = values
        return out

    def invert_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Canvas ids (last axis 81) of a transformed grid, back in the original grid's cells and labels:
        digit tokens are relabelled, every other id (noise, blanks) is kept as it is."""
        table = np.arange(T.VOCAB_SIZE)
        table[T.DIGIT0 + np.asarray(self.digits)[1:]] = T.DIGIT0 + np.arange(1, 10)
        return self.unpermute(table[np.asarray(ids)])
