"""The fixed token format shared by Sudoku training and inference.

Prompt (84 ids): `<bos> <puzzle> c1 .. c81 <solution>`, `.` for blanks. Canvas (81 ids): the solved
digits, givens pinned. Special ids sit where DiffusionGemma keeps them (<pad>=0, <eos>=1, <bos>=2), so
the generic engine's defaults apply unchanged.

| id | token | meaning |
|---:|---|---|
| 0 | `<pad>` | padding |
| 1 | `<eos>` | end of sequence (never in a Sudoku canvas) |
| 2 | `<bos>` | start of the prompt |
| 3 | `<puzzle>` | the 81 puzzle cells follow |
| 4 | `<solution>` | end of the puzzle; the canvas is the solution |
| 5 | `.` | blank cell (`0` in the string form encodes to it too) |
| 6..14 | `1`..`9` | digit d has id 5 + d |
| 15 | `<unused>` | unknown characters |

The ids are frozen: the bundled checkpoint was trained on them (vocab_size 16), so a new token means a
new model. Rows carry no separator token: the model gets positions, and 84 + 81 ids fit the window.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, EOS, BOS, PUZZLE, SOLUTION, BLANK = 0, 1, 2, 3, 4, 5
DIGIT0 = 5  # digit d has id DIGIT0 + d
UNUSED = 15
VOCAB = ["<pad>", "<eos>", "<bos>", "<puzzle>", "<solution>", ".", *"123456789", "<unused>"]
VOCAB_SIZE = len(VOCAB)
SPECIAL = ["<pad>", "<eos>", "<bos>", "<puzzle>", "<solution>", "<unused>"]
PROMPT_LENGTH = 84
CANVAS_LENGTH = 81


def _check(grid: Sequence[int]) -> None:
    if len(grid) != CANVAS_LENGTH or any(v not in range(10) for v in grid):
        raise ValueError(f"a Sudoku grid is 81 values 0-9, got {len(grid)} values")


def cell_token(value: int) -> int:
    """Token id of one cell: the blank token for 0, else the digit's token."""
    return BLANK if value == 0 else DIGIT0 + int(value)


def encode_prompt(grid: Sequence[int]) -> list[int]:
    """The 84 prompt ids the encoder caches: the puzzle framed by its markers."""
    _check(grid)
    return [BOS, PUZZLE, *(cell_token(v) for v in grid), SOLUTION]


def prompt_text(grid: Sequence[int]) -> str:
    """The prompt as text: what the Hugging Face tokenizer turns into exactly `encode_prompt(grid)`."""
    _check(grid)
    return "<bos><puzzle>" + "".join(str(v) if v else "." for v in grid) + "<solution>"


def encode_solution(grid: Sequence[int]) -> list[int]:
    """The 81 canvas ids of a solved grid: the training target and what a solve decodes from."""
    _check(grid)
    if 0 in grid:
        raise ValueError("a solution has no blank cells")
    return [DIGIT0 + int(v) for v in grid]


def decode_canvas(ids: Iterable[int]) -> list[int]:
    """One int per id; anything that is not a digit token reads as 0, so a half-denoised canvas shows
    as a partly filled grid instead of failing."""
    return [int(i) - DIGIT0 if DIGIT0 + 1 <= int(i) <= DIGIT0 + 9 else 0 for i in ids]


def pinned_positions(grid: Sequence[int]) -> dict[int, int]:
    """Canvas position -> token id for every given: the sampler never renoises these."""
    _check(grid)
    return {i: DIGIT0 + int(v) for i, v in enumerate(grid) if v}


def write_tokenizer(directory: str | Path) -> None:
    """A Hugging Face tokenizer.json plus tokenizer_config.json for this vocabulary.

    One token per character, so the text form of a prompt encodes to the same ids as encode_prompt;
    the normalizer drops the whitespace and `| - +` of drawn grids and reads `0` as a blank, as
    parse_puzzle does, so a pasted grid encodes the same way too. Special tokens match before the
    normalizer runs.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unused>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"[\s|+\-]"), ""), normalizers.Replace("0", ".")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unused>",
        "model_max_length": 1024,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
