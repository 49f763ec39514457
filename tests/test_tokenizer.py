"""The tokenizer layer on the real Gemma 4 vocabulary: ids, round trips, chat rendering, thinking, errors.

The vocabulary comes from the maxtext wheel (see gemma4_assets.py), converted once and cached on
disk; the chat template there is a test stand-in written from the documented prompt format, so these
tests check that `render_chat` renders *whatever template ships* faithfully, not Google's exact template text.
Small hand-built tokenizers cover the cases that do not need the real vocabulary.
"""

import json
from pathlib import Path

import pytest
from gemma4_assets import GEMMA4_SPECIAL_IDS, GEMMA4_VOCAB_SIZE, gemma4_spm_model, gemma4_tokenizer_dir

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.tokenizer import Tokenizer, checkpoint_eos_ids, load_tokenizer

GEN_PROMPT = [105, 4368, 107]  # "<|turn>model\n"
TEXTS = [
    "Hello world",
    "  leading spaces,   runs of spaces and a trailing one ",
    "Line one\nline two\n\n\tindented\r\n",
    "héllo wörld — “quotes” … Ω≈ç√∫ 你好，世界 こんにちは 안녕하세요",
    "मैं हिंदी बोलता हूँ। مرحبا بالعالم",
    "emoji 🤗 👨‍👩‍👧‍👦 🇯🇵 and digits 1234567 3.14159 1,000",
    "def f(x):\n    return x ** 2  # <table> and <b>tags</b>\n",
]


@pytest.fixture(scope="session")
def gemma4_dir() -> Path:
    return gemma4_tokenizer_dir()


@pytest.fixture(scope="session")
def tok(gemma4_dir) -> Tokenizer:
    return load_tokenizer(gemma4_dir)


def write_tiny_tokenizer(path: Path, chat_template: str | None = None) -> Path:
    """A 6-word tokenizer.json + tokenizer_config.json: loads in well under a second."""
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    raw = RawTokenizer(
        models.WordLevel({**{s: i for i, s in enumerate(specials)}, "hello": 4, "world": 5}, "<unk>")
    )
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    raw.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    path.mkdir(parents=True, exist_ok=True)
    raw.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}
    config |= {"pad_token": "<pad>", "unk_token": "<unk>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def assert_one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


# ------------------------------------------------------------------------------------ vocabulary


def test_vocab_size_and_special_ids(tok):
    assert tok.vocab_size == GEMMA4_VOCAB_SIZE
    assert (tok.pad_token_id, tok.bos_token_id) == (0, 2)
    assert 1 in tok.eos_token_ids
    for token, expected in GEMMA4_SPECIAL_IDS.items():
        assert tok.token_to_id(token) == expected, token
    assert tok.token_to_id("certainly not one token") is None


def test_special_markers_encode_as_single_ids(tok):
    text = "<|turn>user\nhi<turn|>\n<|channel>thought\nx<channel|><|tool_response><|think|>"
    ids = tok.encode(text, add_special_tokens=False)
    for token in ("<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool_response>", "<|think|>"):
        assert ids.count(GEMMA4_SPECIAL_IDS[token]) == 1, token


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(tok, text):
    ids = tok.encode(text)
    assert ids[0] == 2 and ids.count(2) == 1  # exactly one <bos>, added by the post-processor
    assert tok.decode(ids) == text  # <bos> hidden by skip_special_tokens
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>" + text
    assert tok.encode(text, add_special_tokens=False) == ids[1:]


def test_matches_sentencepiece(tok):
    """The converted tokenizer.json encodes exactly like the original SentencePiece model."""
    spm = pytest.importorskip("sentencepiece")
    sp = spm.SentencePieceProcessor(model_file=str(gemma4_spm_model()))
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text), text


# ------------------------------------------------------------------------------------ chat


def test_chat_two_turns(tok):
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    ids = tok.render_chat(messages)
    assert ids[0] == 2 and ids.count(2) == 1
    assert ids[-3:] == GEN_PROMPT == tok.encode("<|turn>model\n", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=False) == (
        "<bos><|turn>user\nHi there<turn|>\n"
        "<|turn>model\nHello! How can I help?<turn|>\n"
        "<|turn>user\nWhy is the sky blue?<turn|>\n"
        "<|turn>model\n"
    )
    assert tok.render_chat(messages, add_generation_prompt=False) == ids[:-3]


def test_chat_matches_published_ids(tok):
    """The documented third-party tokenisation of one user turn, minus the dropped empty thought channel."""
    ids = tok.render_chat([{"role": "user", "content": "Why is the sky blue?"}])
    assert ids[:4] == [2, 105, 2364, 107]  # <bos> <|turn> user \n
    assert ids[-5:] == [106, 107, 105, 4368, 107]  # <turn|> \n <|turn> model \n


def test_thinking_inserts_think_token(tok):
    user = [{"role": "user", "content": "2+2?"}]
    think = GEMMA4_SPECIAL_IDS["<|think|>"]
    assert think not in tok.render_chat(user)
    ids = tok.render_chat(user, enable_thinking=True)
    system = tok.encode("<|turn>system\n", add_special_tokens=False)
    assert ids[: 1 + len(system) + 1] == [2, *system, think]  # a system turn is created for it
    with_system = tok.render_chat([{"role": "system", "content": "Be brief."}, *user], enable_thinking=True)
    assert tok.decode(with_system, skip_special_tokens=False).startswith(
        "<bos><|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\n"
    )
    assert with_system.count(think) == 1


def test_skip_special_tokens_hides_turn_markers(tok):
    ids = tok.render_chat([{"role": "user", "content": "Hello"}])
    shown = tok.decode(ids)
    for marker in ("<bos>", "<|turn>", "<turn|>"):
        assert marker not in shown
        assert marker in tok.decode(ids, skip_special_tokens=False)
    assert "Hello" in shown


def test_tools_reach_the_template(tok):
    """The stand-in template refuses tools: the refusal proves `tools` was passed through."""
    with pytest.raises(DGemmaError, match="does not render tools") as exc:
        tok.render_chat(
            [{"role": "user", "content": "x"}], tools=[{"type": "function", "function": {"name": "f"}}]
        )
    assert_one_line(exc)


# ------------------------------------------------------------------------------------ thinking split


def test_split_thinking_on_decoded_canvas(tok):
    answer = tok.encode("<|channel>thought\nTwo plus two.<channel|>It is 4.", add_special_tokens=False)
    ids = [*answer, 106, 1, 0, 0]  # <turn|> <eos> <pad> <pad>, as a committed canvas ends
    thought, text = tok.split_thinking(tok.decode(ids, skip_special_tokens=False))
    assert (thought, text) == ("Two plus two.", "It is 4.")
    assert tok.decode(ids) == "thought\nTwo plus two.It is 4."  # why splitting needs the specials kept


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Just an answer.<turn|>", ("", "Just an answer.")),
        ("<|channel>thought\n<channel|>Answer", ("", "Answer")),  # empty thought channel
        (
            "<|channel>thought\nstill thinking when the canvas ran out",
            ("still thinking when the canvas ran out", ""),
        ),
        ("<|channel>thought\na<channel|>b<|channel>thought\nc<channel|>d<eos>", ("a\n\nc", "bd")),
    ],
)
def test_split_thinking_cases(tok, text, expected):
    assert tok.split_thinking(text) == expected


# ------------------------------------------------------------------------------------ other checkpoints


def test_template_from_tokenizer_config_and_eos_from_generation_config(tmp_path):
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"
        "{% if enable_thinking %}world{% endif %}"
    )
    path = write_tiny_tokenizer(tmp_path / "ckpt", chat_template=template)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 106, 50]}))
    tiny = load_tokenizer(path)
    assert tiny.has_chat_template
    assert tiny.render_chat([{"role": "user", "content": "hello"}]) == [2, 4]
    assert tiny.render_chat([{"role": "user", "content": "hello"}], enable_thinking=True) == [2, 4, 5]
    assert tiny.eos_token_ids == {1, 106, 50}


def test_checkpoint_eos_ids_precedence(tmp_path):
    assert checkpoint_eos_ids(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": 1}}))
    assert checkpoint_eos_ids(tmp_path) == [1]
    (tmp_path / "config.json").write_text(
        json.dumps({"eos_token_id": [1, 106], "text_config": {"eos_token_id": 1}})
    )
    assert checkpoint_eos_ids(tmp_path) == [1, 106]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 106, 50]}))
    assert checkpoint_eos_ids(tmp_path) == [1, 106, 50]


# ------------------------------------------------------------------------------------ errors


def test_no_chat_template_is_a_one_line_error(tmp_path):
    tiny = load_tokenizer(write_tiny_tokenizer(tmp_path / "plain"))
    assert not tiny.has_chat_template
    assert tiny.encode("hello world") == [4, 5]
    with pytest.raises(DGemmaError, match="no chat template") as exc:
        tiny.render_chat([{"role": "user", "content": "hello"}])
    assert str(tmp_path / "plain") in assert_one_line(exc)


def test_missing_tokenizer_names_the_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DGemmaError, match="no tokenizer") as exc:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in assert_one_line(exc)
    with pytest.raises(DGemmaError) as exc:
        load_tokenizer(tmp_path / "absent")
    assert str(tmp_path / "absent") in assert_one_line(exc)


def test_broken_tokenizer_is_a_one_line_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json")
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"})
    )
    with pytest.raises(DGemmaError, match="could not load the tokenizer") as exc:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in assert_one_line(exc)


@pytest.mark.parametrize("hostile", ["fifo", "outside"])
def test_tokenizer_files_must_be_regular_files_inside_the_model(tmp_path, hostile):
    """A FIFO named tokenizer.json must not hang the loader; a symlink out of the model is not read."""
    import os

    model = write_tiny_tokenizer(tmp_path / "m")
    (model / "tokenizer.json").unlink()
    if hostile == "fifo":
        os.mkfifo(model / "tokenizer.json")
    else:
        outside = write_tiny_tokenizer(tmp_path / "elsewhere")
        (model / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    with pytest.raises(DGemmaError) as exc:
        load_tokenizer(model)
    assert "tokenizer.json" in assert_one_line(exc)
