"""Sudoku generator, solver, validator and token format (no model)."""

import pytest

from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.puzzles import (
    GIVENS,
    PuzzleError,
    format_puzzle,
    generate_batch,
    generate_puzzle,
    has_unique_solution,
    is_valid_solution,
    parse_puzzle,
    singles_only,
    solve,
)

KNOWN = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generated_puzzles_have_unique_solutions_in_their_grade(difficulty):
    for p in generate_batch(seed=5, difficulty=difficulty, count=3):
        lo, hi = GIVENS[difficulty]
        assert lo <= p.givens <= hi
        assert has_unique_solution(p.puzzle)
        assert solve(p.puzzle, limit=2) == [list(p.solution)]
        assert is_valid_solution(p.solution, p.puzzle)
        if difficulty == "easy":
            assert singles_only(p.puzzle)
        if difficulty == "medium":
            assert not singles_only(p.puzzle)  # medium needs more than singles


def test_generation_is_deterministic_by_seed():
    assert generate_batch(9, "easy", 2) == generate_batch(9, "easy", 2)
    assert generate_puzzle(1, "easy") != generate_puzzle(2, "easy")


def test_validator_rejects_wrong_grids():
    solution = solve(parse_puzzle(KNOWN), limit=1)[0]
    puzzle = parse_puzzle(KNOWN)
    assert is_valid_solution(solution, puzzle)
    swapped = list(solution)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert not is_valid_solution(swapped)
    dup = list(solution)
    dup[10] = dup[0]
    assert not is_valid_solution(dup)
    assert not is_valid_solution(solution[:80])
    other = list(solution)  # a valid grid that contradicts the givens
    other = [10 - v for v in other]
    assert is_valid_solution(other) and not is_valid_solution(other, puzzle)


@pytest.mark.parametrize(
    "text, message",
    [
        (KNOWN[:80], "puzzle has 80 cells, expected 81"),
        (KNOWN[:80] + "x", "bad character 'x' at cell 81"),
        ("55" + KNOWN[2:], "digit 5 appears twice in row 1"),
    ],
)
def test_parse_errors_are_one_line(text, message):
    with pytest.raises(PuzzleError, match=message):
        parse_puzzle(text)


def test_parse_accepts_dots_zeros_and_separators():
    grid = parse_puzzle(KNOWN.replace(".", "0"))
    assert format_puzzle(grid) == KNOWN
    boxed = "\n".join(KNOWN[i : i + 9] for i in range(0, 81, 9))
    assert parse_puzzle(boxed.replace("\n", " | \n")) == grid


def test_token_format_round_trips(tmp_path):
    p = generate_puzzle(3, "easy")
    prompt = T.encode_prompt(p.puzzle)
    assert len(prompt) == T.PROMPT_LENGTH and prompt[0] == T.BOS
    canvas = T.encode_solution(p.solution)
    assert len(canvas) == T.CANVAS_LENGTH and T.decode_canvas(canvas) == list(p.solution)
    pins = T.pinned_positions(p.puzzle)
    assert len(pins) == p.givens and all(canvas[i] == t for i, t in pins.items())
    assert T.decode_canvas([T.PAD, T.EOS, T.BLANK]) == [0, 0, 0]

    from transformers import AutoTokenizer

    T.write_tokenizer(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = "<bos><puzzle>" + format_puzzle(p.puzzle) + "<solution>"
    assert hf.encode(text, add_special_tokens=False) == prompt
    assert hf.decode(canvas) == "".join(str(v) for v in p.solution)
