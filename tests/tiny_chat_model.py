"""A tiny random DiffusionGemma with a 128-word vocabulary, for CLI tests and benchmarks.

Why a word-level toy rather than the real 262,144-id Gemma 4 vocabulary (`tiny_models.py`): it loads
in milliseconds, needs nothing from the network, and every id decodes to a readable word, so a test
can read a terminal screen. The special tokens sit at Gemma 4's own ids (`<pad>` 0, `<eos>` 1,
`<bos>` 2, `<|think|>` 98, `<|channel>` 100, `<channel|>` 101, `<|turn>` 105, `<turn|>` 106), and the
chat template is the same Gemma 4 stand-in the real-vocabulary tests use, so turns, EOS at `<turn|>`
and thinking mode behave as on a real checkpoint. The embedding is scaled by 8 so the random model's
outputs are peaky enough for entropy acceptance and adaptive stopping to actually trigger.

    make_tiny_chat_model(path, seed=0) -> path   (config.json, generation_config.json,
                                                  model.safetensors, tokenizer files)
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
from gemma4_assets import CHAT_TEMPLATE
from mlx.utils import tree_flatten
from tiny_geometry import TINY_GEOMETRY

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.model import Model

VOCAB_SIZE = 128
SPECIAL_IDS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<|think|>": 98,
    "<|channel>": 100,
    "<channel|>": 101,
    "<|turn>": 105,
    "<turn|>": 106,
}
# Role names and `thought` first (the template and split_thinking need them), then punctuation, then
# ordinary words; together they fill every id the special tokens leave free.
WORDS = """user model system thought . , ? ! ' the a an and or but if then so of to in on at by for with
from about as is are was were be been have has had do does did not no yes i you he she it we they me
him her us them my your our their this that these those what which who when where why how all some
any many much more most other such only own same than too very can will just should now hello there
hi tell me everything story sky blue why sun moon star day night time world life people way thing
man woman child good new first last long great little old big high small large next early young
important few public bad able""".split()

CONFIG = {
    "model_type": "diffusion_gemma",
    "canvas_length": 8,
    "text_config": {
        **TINY_GEOMETRY,
        "vocab_size": VOCAB_SIZE,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "sliding_window": 4,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
    },
}
GENERATION = {"max_new_tokens": 16, "max_denoising_steps": 8, "eos_token_id": [1, 106], "pad_token_id": 0}
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "add_bos_token": False,
    "clean_up_tokenization_spaces": True,
    "model_max_length": 1_000_000,
}


def vocabulary() -> dict[str, int]:
    """All 128 entries: specials at Gemma 4's ids, words in the remaining slots in order."""
    free = [i for i in range(VOCAB_SIZE) if i not in SPECIAL_IDS.values()]
    words = list(dict.fromkeys(WORDS))
    filler = [f"word{i}" for i in range(len(free) - len(words))]
    vocab = dict(SPECIAL_IDS)
    vocab.update(zip(words + filler, free, strict=False))
    assert len(vocab) == VOCAB_SIZE and sorted(vocab.values()) == list(range(VOCAB_SIZE))
    return vocab


def write_tokenizer(path: Path) -> None:
    """tokenizer.json (WordLevel, lower-cased, split on whitespace and punctuation) + configs."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    tok = Tokenizer(WordLevel(vocabulary(), unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ?"
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in sorted(SPECIAL_IDS, key=SPECIAL_IDS.get)]
    )
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def make_tiny_chat_model(path: str | Path, seed: int = 0, **generation: object) -> Path:
    """Write the tiny model into `path` (created if needed); `generation` overrides generation_config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(CONFIG))
    weights = dict(tree_flatten(model.parameters()))
    for key in weights:
        if key.endswith("embed_tokens.weight"):
            weights[key] = weights[key] * 8.0
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    (path / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (path / "generation_config.json").write_text(json.dumps({**GENERATION, **generation}, indent=2))
    write_tokenizer(path)
    return path
