"""Every tiny random DiffusionGemma the tests and benchmarks build, and the one rule that sharpens them.

One module so the models cannot drift apart:
- `TINY_GEOMETRY`: the sizes every test model shares (also the transformers reference checkpoints of
  `hf_reference.py`), so a bug that only one size exposes shows up in every suite.
  Vocabulary, layer types, window and special ids differ per model and are set where each is built.
- `SHARPEN` / `sharpen`: the embedding (tied: also the LM head) times 8, so a random model's outputs
  are peaky enough for entropy acceptance and adaptive stopping to actually trigger.
  `hf_reference.write_tiny_checkpoint(embed_multiplier=SHARPEN)` applies the same factor on the torch side.
- `tiny_model(vocab_size=64)`: an in-memory model (no tokenizer), for engine tests that feed ids.
- `tiny_chat_model(path)`: the real 262,144-id Gemma 4 vocabulary and chat template (not sharpened).
- `word_chat_model(path)`: a 128-word word-level vocabulary, sharpened.

Why a word-level toy besides the real vocabulary: it loads in milliseconds, needs nothing from the
network, and every id decodes to a readable word, so a test can read a terminal screen. Its special
tokens sit at Gemma 4's own ids (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<|think|>` 98, `<|channel>` 100,
`<channel|>` 101, `<|turn>` 105, `<turn|>` 106), and the chat template is the same Gemma 4 stand-in the
real-vocabulary tests use, so turns, EOS at `<turn|>` and thinking mode behave as on a real checkpoint.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from gemma4_assets import CHAT_TEMPLATE, gemma4_tokenizer_dir
from mlx.utils import tree_flatten

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.model import Model

TINY_GEOMETRY = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "global_head_dim": 16,
    "num_global_key_value_heads": 1,
    "num_experts": 4,
    "top_k_experts": 2,
}
SHARPEN = 8.0

# The real-vocabulary chat model (and, with a smaller vocabulary, the in-memory engine model).
CHAT_CONFIG = {
    "model_type": "diffusion_gemma",
    "canvas_length": 8,
    "text_config": {
        **TINY_GEOMETRY,
        "vocab_size": 262144,
        "sliding_window": 4,
    },
}
GENERATION = {"max_new_tokens": 8, "max_denoising_steps": 4, "eos_token_id": [1, 106, 50], "pad_token_id": 0}

# The word-level chat model.
WORD_VOCAB_SIZE = 128
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

WORD_CONFIG = {
    "model_type": "diffusion_gemma",
    "canvas_length": 8,
    "text_config": {
        **TINY_GEOMETRY,
        "vocab_size": WORD_VOCAB_SIZE,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "sliding_window": 4,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": [1, 106],
    },
}
WORD_GENERATION = {
    "max_new_tokens": 16,
    "max_denoising_steps": 8,
    "eos_token_id": [1, 106],
    "pad_token_id": 0,
}
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


def sharpen(model: Model, factor: float = SHARPEN) -> Model:
    """Scale the embedding (tied: also the LM head) in place, so acceptance and stopping trigger."""
    embed = model.model.decoder.embed_tokens
    embed.weight = embed.weight * factor
    return model


def random_model(config: dict, *, seed: int = 0, sharpened: bool = False) -> Model:
    """The random model every builder starts from: `mx.random.seed(seed)`, then the config."""
    mx.random.seed(seed)
    model = Model(ModelConfig.from_dict(config))
    return sharpen(model) if sharpened else model


def tiny_model(vocab_size: int = 64, *, seed: int = 0, sharpened: bool = True) -> Model:
    """In memory, evaluated, no tokenizer: the chat model's shape with a small vocabulary."""
    config = {**CHAT_CONFIG, "text_config": {**CHAT_CONFIG["text_config"], "vocab_size": vocab_size}}
    model = random_model(config, seed=seed, sharpened=sharpened)
    mx.eval(model.parameters())
    return model


def save_model(model: Model, path: Path, config: dict, generation: dict) -> Path:
    """model.safetensors, config.json and generation_config.json: what `load` needs besides a tokenizer."""
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return path


def tiny_chat_model(path: str | Path | None = None, **generation: object) -> Path:
    """The real Gemma 4 vocabulary and chat template; `generation` overrides generation_config."""
    path = Path(path or tempfile.mkdtemp(prefix="dgemma-bench-"))
    path.mkdir(parents=True, exist_ok=True)
    for f in gemma4_tokenizer_dir().iterdir():
        shutil.copy(f, path / f.name)
    return save_model(random_model(CHAT_CONFIG), path, CHAT_CONFIG, {**GENERATION, **generation})


def vocabulary() -> dict[str, int]:
    """All 128 entries: specials at Gemma 4's ids, words in the remaining slots in order."""
    free = [i for i in range(WORD_VOCAB_SIZE) if i not in SPECIAL_IDS.values()]
    words = list(dict.fromkeys(WORDS))
    filler = [f"word{i}" for i in range(len(free) - len(words))]
    vocab = dict(SPECIAL_IDS)
    vocab.update(zip(words + filler, free, strict=False))
    assert len(vocab) == WORD_VOCAB_SIZE and sorted(vocab.values()) == list(range(WORD_VOCAB_SIZE))
    return vocab


def write_word_tokenizer(path: Path) -> None:
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


def word_chat_model(path: str | Path | None = None, seed: int = 0, **generation: object) -> Path:
    """The sharpened 128-word model in `path` (created if needed); `generation` overrides its config."""
    path = Path(path or tempfile.mkdtemp(prefix="dgemma-bench-"))
    path.mkdir(parents=True, exist_ok=True)
    model = random_model(WORD_CONFIG, seed=seed, sharpened=True)
    save_model(model, path, WORD_CONFIG, {**WORD_GENERATION, **generation})
    write_word_tokenizer(path)
    return path
