"""Sudoku's symmetries: they keep puzzles valid and unique, and every one can be undone exactly, which
is what lets a retry on a transformed copy answer the original puzzle."""

import numpy as np
import pytest

from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.puzzles import generate_batch, has_unique_solution, is_valid_solution
from dgemma_mlx.sudoku.symmetry import Symmetry


@pytest.fixture(scope="module")
def puzzles():
    return generate_batch(3, "medium", 3)


def test_random_symmetry_keeps_a_puzzle_valid_and_unique(puzzles):
    rng = np.random.default_rng(0)
    for p in puzzles:
        s = Symmetry.random(rng)
        puzzle, solution = s.apply(p.puzzle), s.apply(p.solution)
        assert (puzzle != 0).sum() == sum(v != 0 for v in p.puzzle)
        assert is_valid_solution(solution.tolist(), puzzle.tolist())
        assert has_unique_solution(puzzle.tolist())
        assert puzzle.tolist() != list(p.puzzle)  # it did move something


def test_invert_undoes_apply(puzzles):
    rng = np.random.default_rng(1)
    assert Symmetry.identity().apply(puzzles[0].puzzle).tolist() == list(puzzles[0].puzzle)
    for p in puzzles:
        for _ in range(5):
            s = Symmetry.random(rng)
            assert s.invert(s.apply(p.puzzle)).tolist() == list(p.puzzle)
            assert s.invert(s.apply(p.solution)).tolist() == list(p.solution)


def test_canvas_ids_and_cell_values_map_back_to_their_cells(puzzles):
    solution = puzzles[0].solution
    s = Symmetry.random(np.random.default_rng(2))
    ids = np.array([T.encode_solution(s.apply(solution).tolist())] * 2)  # a batch of two rows
    ids[1, 10] = T.UNUSED  # noise and blanks are moved, never relabelled
    ids[1, 20] = T.BLANK
    back = s.invert_tokens(ids)
    assert back[0].tolist() == T.encode_solution(solution)
    assert back[1, s.cells[10]] == T.UNUSED and back[1, s.cells[20]] == T.BLANK
    assert T.decode_canvas(back[1])[s.cells[30]] == solution[s.cells[30]]
    values = np.arange(81, dtype=np.float32)[None, :].repeat(2, axis=0)  # value i sits in cell i
    assert (s.unpermute(values)[:, list(s.cells)] == values).all()
