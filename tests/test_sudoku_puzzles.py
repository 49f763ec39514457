"""Sudoku generator, solvers, validator and token format (no model)."""

import json
import random

import pytest

from dgemma_mlx.sudoku import ASSETS
from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.puzzles import (
    BOXES,
    GIVENS,
    GUESSING,
    MEDIUM_TECHNIQUES,
    SINGLES,
    PuzzleError,
    format_puzzle,
    generate_batch,
    generate_puzzle,
    grade,
    has_unique_solution,
    is_valid_solution,
    parse_puzzle,
    random_solution,
    singles_only,
    solve,
    techniques_needed,
)

KNOWN = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
# Arto Inkala's "world's hardest Sudoku": no single, pair or locked candidate applies at the start.
INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."
# 17 givens and many solutions: branching on cells alone once took 300k nodes to find two.
SPARSE = ".....6....59.....82....8....45........3........6..3.54...325..6.................."


@pytest.fixture(scope="module")
def known_solution():
    return solve(parse_puzzle(KNOWN), limit=1)[0]


@pytest.mark.parametrize("difficulty", ["easy", "medium", "hard"])
def test_generated_puzzles_are_unique_and_graded(difficulty):
    lo, hi = GIVENS[difficulty]
    for seed in (0, 5, 11):
        for p in generate_batch(seed=seed, difficulty=difficulty, count=2):
            assert p.difficulty == difficulty
            assert p.givens == sum(1 for v in p.puzzle if v) and lo <= p.givens <= hi
            assert solve(p.puzzle, limit=2) == [list(p.solution)]
            assert has_unique_solution(p.puzzle) and is_valid_solution(p.solution, p.puzzle)
            assert p.techniques == techniques_needed(p.puzzle)
            assert grade(p.puzzle) == difficulty
            used = set(p.techniques)
            if difficulty == "easy":
                assert used <= SINGLES and singles_only(p.puzzle)
            elif difficulty == "medium":
                assert GUESSING not in used and used & MEDIUM_TECHNIQUES
                assert not singles_only(p.puzzle)
            else:
                assert GUESSING in used


def test_generation_is_deterministic_by_seed():
    assert generate_batch(9, "medium", 2) == generate_batch(9, "medium", 2)
    assert generate_puzzle(random.Random(4), "hard") == generate_puzzle(4, "hard")
    assert generate_puzzle(1, "easy") != generate_puzzle(2, "easy")
    rng = random.Random(0)
    state = random.getstate()
    generate_batch(3, "easy", 10)
    assert random.getstate() == state  # no global random state touched
    assert rng.random() == random.Random(0).random()
    with pytest.raises(PuzzleError, match="unknown difficulty 'extreme'"):
        generate_puzzle(0, "extreme")


def test_random_solution_is_a_valid_full_grid():
    grids = [random_solution(seed) for seed in range(5)]
    assert all(is_valid_solution(g) for g in grids)
    assert len({tuple(g) for g in grids}) == 5


def test_exact_solver_on_hard_sparse_and_broken_grids(known_solution):
    (inkala,) = solve(parse_puzzle(INKALA), limit=2)
    assert is_valid_solution(inkala, parse_puzzle(INKALA))
    two = solve(parse_puzzle(SPARSE), limit=2)
    assert len(two) == 2 and two[0] != two[1] and all(is_valid_solution(s, parse_puzzle(SPARSE)) for s in two)
    assert not has_unique_solution(parse_puzzle(SPARSE))
    assert len(solve([0] * 81, limit=3)) == 3
    assert solve(known_solution) == [known_solution]
    broken = parse_puzzle(KNOWN)
    broken[2] = 1  # consistent givens, but cell 3 of row 1 can't be 1 in any solution
    assert solve(broken) == [] and not has_unique_solution(broken)
    assert solve([5, 5] + [0] * 79) == []  # contradictory givens
    with pytest.raises(PuzzleError, match="81 values"):
        solve([0] * 80)


def test_logical_solver_grades_by_technique():
    assert techniques_needed(parse_puzzle(INKALA)) == (GUESSING,)
    assert grade(parse_puzzle(INKALA)) == "hard"
    assert set(techniques_needed(parse_puzzle(KNOWN))) <= SINGLES and grade(parse_puzzle(KNOWN)) == "easy"
    assert not singles_only(parse_puzzle(SPARSE))  # several solutions: logic alone never finishes
    assert GUESSING in techniques_needed([5, 5] + [0] * 79)


def test_validator_rejects_wrong_grids(known_solution):
    puzzle = parse_puzzle(KNOWN)
    assert is_valid_solution(known_solution, puzzle)
    assert is_valid_solution(tuple(known_solution))
    swapped = list(known_solution)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert not is_valid_solution(swapped)
    box_dup = list(known_solution)
    box_dup[BOXES[0][4]] = box_dup[BOXES[0][0]]  # same box, different row and column
    assert not is_valid_solution(box_dup)
    assert not is_valid_solution(known_solution[:80])
    assert not is_valid_solution([*known_solution, 1])
    assert not is_valid_solution([0, *known_solution[1:]], puzzle)  # incomplete
    other = [10 - v for v in known_solution]  # a valid grid that contradicts the givens
    assert is_valid_solution(other) and not is_valid_solution(other, puzzle)


@pytest.mark.parametrize(
    "text, message",
    [
        (KNOWN[:80], "puzzle has 80 cells, expected 81"),
        (KNOWN + "1", "puzzle has 82 cells, expected 81"),
        (KNOWN[:80] + "x", "bad character 'x' at cell 81"),
        ("53a" + KNOWN[3:], "bad character 'a' at cell 3"),
        ("55" + KNOWN[2:], "digit 5 appears twice in row 1"),
        ("6" + KNOWN[1:], "digit 6 appears twice in column 1"),
        (KNOWN[:18] + "3" + KNOWN[19:], "digit 3 appears twice in box 1"),
    ],
)
def test_parse_errors_are_one_line(text, message):
    with pytest.raises(PuzzleError, match=message) as info:
        parse_puzzle(text)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_parse_accepts_dots_zeros_and_separators():
    grid = parse_puzzle(KNOWN.replace(".", "0"))
    assert format_puzzle(grid) == KNOWN and parse_puzzle(KNOWN) == grid
    rows = [KNOWN[i : i + 9] for i in range(0, 81, 9)]
    drawn = "\n".join(
        f"{r[:3]} | {r[3:6]} | {r[6:]}" + ("\n------+-------+------" if k in (2, 5) else "")
        for k, r in enumerate(rows)
    )
    assert parse_puzzle(drawn) == grid


def test_token_format_round_trips():
    p = generate_puzzle(3, "easy")
    prompt = T.encode_prompt(p.puzzle)
    assert len(prompt) == T.PROMPT_LENGTH and prompt[:2] == [T.BOS, T.PUZZLE] and prompt[-1] == T.SOLUTION
    assert T.decode_canvas(prompt[2:-1]) == list(p.puzzle)
    canvas = T.encode_solution(p.solution)
    assert len(canvas) == T.CANVAS_LENGTH and T.decode_canvas(canvas) == list(p.solution)
    pins = T.pinned_positions(p.puzzle)
    assert len(pins) == p.givens and all(canvas[i] == t for i, t in pins.items())
    assert T.decode_canvas([T.PAD, T.EOS, T.BOS, T.BLANK, T.UNUSED, T.DIGIT0 + 7]) == [0, 0, 0, 0, 0, 7]
    assert T.VOCAB[:3] == ["<pad>", "<eos>", "<bos>"] and T.VOCAB_SIZE == 16
    assert [T.VOCAB[T.DIGIT0 + d] for d in range(1, 10)] == list("123456789")
    with pytest.raises(ValueError):
        T.encode_prompt(p.puzzle[:80])
    with pytest.raises(ValueError):
        T.encode_solution(p.puzzle)  # blanks are not a solution


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    import transformers  # a dev dependency: the test must fail, not skip, without it
    p = generate_puzzle(7, "medium")
    T.write_tokenizer(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (T.BOS, T.EOS, T.PAD)
    prompt = T.encode_prompt(p.puzzle)
    assert hf.encode(T.prompt_text(p.puzzle), add_special_tokens=False) == prompt
    drawn = "\n".join(format_puzzle(p.puzzle)[i : i + 9].replace(".", "0") for i in range(0, 81, 9))
    assert hf.encode(f"<bos><puzzle>\n{drawn}\n<solution>", add_special_tokens=False) == prompt
    assert hf.decode(prompt) == T.prompt_text(p.puzzle)
    assert hf.decode(prompt, skip_special_tokens=True) == format_puzzle(p.puzzle)
    assert hf.decode(T.encode_solution(p.solution)) == "".join(map(str, p.solution))


def test_bundled_tokenizer_has_the_frozen_vocabulary():
    """The shipped checkpoint was trained on these ids; tokens.py must never drift from them."""
    vocab = json.loads((ASSETS / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab == {t: i for i, t in enumerate(T.VOCAB)}
