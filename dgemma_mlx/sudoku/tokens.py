"""The fixed token format shared by Sudoku training and inference.

Prompt: `<bos> <puzzle> c1 .. c81 <solution>` with `.` for blanks; canvas: the 81 solved digits.
Special ids sit where DiffusionGemma keeps them (<pad>=0, <eos>=1, <bos>=2) so the generic engine's
defaults apply unchanged.

| id | token | id | token |
|----|-------|----|-------|
| 0 | `<pad>` | 5 | `.` (blank) |
| 1 | `<eos>` | 6..14 | `1`..`9` |
| 2 | `<bos>` | 15 | `<unused>` |
| 3 | `<puzzle>` | | |
| 4 | `<solution>` | | |
"""

from __future__ import annotations

import json
from pathlib import Path

PAD, EOS, BOS, PUZZLE, SOLUTION, BLANK = 0, 1, 2, 3, 4, 5
DIGIT0 = 5  # digit d has id DIGIT0 + d
VOCAB = ["<pad>", "<eos>", "<bos>", "<puzzle>", "<solution>", ".", *"123456789", "<unused>"]
VOCAB_SIZE = len(VOCAB)
SPECIAL = ["<pad>", "<eos>", "<bos>", "<puzzle>", "<solution>", "<unused>"]
PROMPT_LENGTH = 84
CANVAS_LENGTH = 81


def cell_token(value: int) -> int:
    return BLANK if value == 0 else DIGIT0 + value


def encode_prompt(grid) -> list[int]:
    return [BOS, PUZZLE, *(cell_token(v) for v in grid), SOLUTION]


def encode_solution(grid) -> list[int]:
    return [DIGIT0 + v for v in grid]


def decode_canvas(ids) -> list[int]:
    """81 ints; anything that is not a digit token reads as 0 (unsolved)."""
    return [int(i) - DIGIT0 if DIGIT0 + 1 <= int(i) <= DIGIT0 + 9 else 0 for i in ids]


def pinned_positions(grid) -> dict[int, int]:
    """Canvas position -> token id for every given: the sampler never renoises these."""
    return {i: DIGIT0 + v for i, v in enumerate(grid) if v}


def write_tokenizer(directory: str | Path) -> None:
    """A Hugging Face tokenizer.json (one token per character) plus tokenizer_config.json."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unused>"))
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
