"""The tokenizer layer: text and chat messages <-> token ids, via the checkpoint's own files.

Loading goes through mlx-lm's `tokenizer_utils.load` (a thin layer over transformers' AutoTokenizer)
so a checkpoint behaves here exactly as it does under mlx-lm: same tokenizer.json, same
`chat_template.jinja` (or the template in tokenizer_config.json), same `enable_thinking` handling.
The port never hand-writes a chat template, because Gemma 4's has changed between revisions
(docs/ARCHITECTURE.md, "Chat template and thinking"): `render_chat` only renders the one that ships
next to the weights. Nothing here imports torch or transformers' modeling code.

Diffusion canvases are decoded whole, so there is no streaming detokenizer on this wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import DGemmaError
from .jsonfile import read_json_object_or_empty

# Files that make a directory a tokenizer directory (any one is enough for AutoTokenizer to try).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
# Other files the tokenizer loader may open by their fixed names.
TOKENIZER_SIDE_FILES = (
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "config.json",
)

# Gemma-4 thinking delimiters (docs/ARCHITECTURE.md, "Chat template and thinking"): the model writes
# `<|channel>thought\n...<channel|>` before its answer when the system turn starts with `<|think|>`.
CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"
THOUGHT_CHANNEL = "thought"


def _one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message, so errors stay one line for the user."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def _as_ids(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [int(v) for v in value]
    return [int(value)]


def checkpoint_eos_ids(model_dir: Path) -> list[int]:
    """EOS ids the checkpoint declares beyond the tokenizer's own `<eos>`.

    Chat turns end with `<turn|>` (106) and tool calls with `<|tool_response>` (50), which only the
    model's configs list (`[1, 106, 50]`, docs/ARCHITECTURE.md, "Configuration"). Same precedence as
    mlx-lm: generation_config.json wins over config.json (top level, then `text_config`).
    """
    gen = read_json_object_or_empty(model_dir / "generation_config.json")
    if gen.get("eos_token_id") is not None:
        return _as_ids(gen["eos_token_id"])
    cfg = read_json_object_or_empty(model_dir / "config.json")
    if cfg.get("eos_token_id") is not None:
        return _as_ids(cfg["eos_token_id"])
    text = cfg.get("text_config")
    if isinstance(text, dict) and text.get("eos_token_id") is not None:
        return _as_ids(text["eos_token_id"])
    return []


def has_tokenizer(model_dir: Path | str) -> bool:
    """Whether `model_dir` ships any tokenizer file at all."""
    return any((Path(model_dir) / name).exists() for name in TOKENIZER_FILES)


class Tokenizer:
    """A DiffusionGemma tokenizer: mlx-lm's `TokenizerWrapper` behind a small, typed surface.

    Only what generation and display need is exposed; everything else stays inside mlx-lm and
    transformers so the checkpoint's files remain the single source of truth.
    """

    def __init__(self, wrapper: Any, model_dir: Path) -> None:
        self._wrapper = wrapper
        self._hf = wrapper._tokenizer
        self.model_dir = model_dir
        self._special_re: re.Pattern[str] | None = None

    # ----------------------------------------------------------------- ids and properties

    @property
    def has_chat_template(self) -> bool:
        """Whether the checkpoint ships a chat template (chat_template.jinja or tokenizer_config.json)."""
        return bool(self._wrapper.has_chat_template)

    @property
    def eos_token_ids(self) -> set[int]:
        """The tokenizer's `<eos>` plus every EOS id the checkpoint's configs declare."""
        return {int(t) for t in self._wrapper.eos_token_ids}

    @property
    def pad_token_id(self) -> int | None:
        return self._hf.pad_token_id

    @property
    def bos_token_id(self) -> int | None:
        return self._hf.bos_token_id

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce, added/special tokens included (262,144 for Gemma 4)."""
        return len(self._hf)

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry (e.g. `"<turn|>"`), or None if it is not a single token."""
        tid = self._hf.convert_tokens_to_ids(token)
        if tid is None or (tid == self._hf.unk_token_id and token != self._hf.unk_token):
            return None
        return int(tid)

    # ----------------------------------------------------------------- text

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids for plain text; `add_special_tokens` adds `<bos>` as the checkpoint configures."""
        return [int(t) for t in self._hf.encode(text, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text for ids; by default turn markers, `<eos>`/`<pad>` and channel markers are hidden."""
        return self._hf.decode([int(t) for t in ids], skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Per-id display text (for the live canvas view), special tokens included."""
        return [self._hf.decode([int(t)], skip_special_tokens=False) for t in ids]

    # ----------------------------------------------------------------- chat

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of `messages` rendered with the checkpoint's own chat template.

        Messages go to the template untouched (Gemma 4's template maps `assistant` to `model`
        itself). `enable_thinking` is passed through (Gemma 4 puts `<|think|>` at the top of the
        system turn). The template writes `<bos>` itself, so no further special tokens are added.
        A template that rejects the conversation (`raise_exception`) becomes a one-line DGemmaError.
        """
        if not self.has_chat_template:
            raise DGemmaError(
                f"the tokenizer in {self.model_dir} has no chat template: pass plain text or token ids"
            )
        import jinja2

        kwargs: dict[str, Any] = {
            "add_generation_prompt": add_generation_prompt,
            "enable_thinking": enable_thinking,
        }
        if tools is not None:
            kwargs["tools"] = list(tools)
        try:
            ids = self._wrapper.apply_chat_template(list(messages), tokenize=True, **kwargs)
        except jinja2.TemplateError as exc:
            raise DGemmaError(f"chat template error: {_one_line(exc)}") from exc
        if hasattr(ids, "keys"):  # a BatchEncoding, should a transformers version ignore return_dict
            ids = ids["input_ids"]
        return [int(t) for t in ids]

    # ----------------------------------------------------------------- thinking

    def _strip_specials(self, text: str) -> str:
        """Remove special-token strings left in text decoded with `skip_special_tokens=False`."""
        if self._special_re is None:
            specials = {tok.content for tok in self._hf.added_tokens_decoder.values() if tok.special}
            specials |= set(self._hf.all_special_tokens)
            specials -= {"", CHANNEL_OPEN, CHANNEL_CLOSE}
            alternation = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
            self._special_re = re.compile(alternation or r"(?!)")
        return self._special_re.sub("", text)

    def split_thinking(self, text: str) -> tuple[str, str]:
        """Split decoded text into (thought, answer), both without special tokens.

        Expects text decoded with `skip_special_tokens=False`, since the `<|channel>`/`<channel|>`
        delimiters are special tokens and vanish otherwise. Every `<|channel>thought\\n...<channel|>`
        block goes to the thought (several are joined by a blank line); an unterminated block (a
        canvas cut short mid-thought) is all thought. Other special tokens (`<turn|>`, `<eos>`,
        `<pad>`...) are removed from both parts, so the answer is ready for display or history.
        """
        thoughts: list[str] = []
        answer: list[str] = []
        rest = text
        while True:
            start = rest.find(CHANNEL_OPEN)
            if start < 0:
                answer.append(rest)
                break
            answer.append(rest[:start])
            body = rest[start + len(CHANNEL_OPEN) :]
            end = body.find(CHANNEL_CLOSE)
            block, rest = (body, "") if end < 0 else (body[:end], body[end + len(CHANNEL_CLOSE) :])
            if block.startswith(THOUGHT_CHANNEL):
                block = block[len(THOUGHT_CHANNEL) :].removeprefix("\n")
            block = self._strip_specials(block).strip()
            if block:
                thoughts.append(block)
            if end < 0:
                break
        return "\n\n".join(thoughts), self._strip_specials("".join(answer)).strip()

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_dir}, vocab_size={self.vocab_size}, chat={self.has_chat_template})"


@contextlib.contextmanager
def _quiet_rope_validation() -> Iterator[None]:
    """AutoTokenizer parses config.json into a model config, and transformers' RoPE validation warns
    about settings it merely finds unusual (the bundled Sudoku model's linear factor < 1, which it
    computes exactly as we do). That says nothing about the tokenizer, so it stays off the terminal."""
    rope_logger = logging.getLogger("transformers.modeling_rope_utils")
    previous = rope_logger.level
    rope_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        rope_logger.setLevel(previous)


def load_tokenizer(model_dir: Path | str) -> Tokenizer:
    """Load the tokenizer shipped in `model_dir` (tokenizer.json / tokenizer.model + configs).

    Raises DGemmaError, naming the directory, when there is no tokenizer or it cannot be read.
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise DGemmaError(f"{model_dir}: not a directory, so there is no tokenizer to load")
    if not has_tokenizer(model_dir):
        raise DGemmaError(f"no tokenizer in {model_dir}: expected one of {', '.join(TOKENIZER_FILES)}")
    from .loading import checked_model_file

    for name in (*TOKENIZER_FILES, *TOKENIZER_SIDE_FILES):  # what transformers opens: inside, regular
        if (model_dir / name).exists() or (model_dir / name).is_symlink():
            checked_model_file(model_dir, name)
    # mlx-lm's own loader, not `mlx_lm.utils.load_tokenizer`: that one would try the hub for a
    # missing path and probe config.json for an mlx-lm model class DiffusionGemma does not have.
    from mlx_lm.tokenizer_utils import load as mlx_lm_load_tokenizer

    try:
        with _quiet_rope_validation():
            wrapper = mlx_lm_load_tokenizer(model_dir, eos_token_ids=checkpoint_eos_ids(model_dir) or None)
    except Exception as exc:  # transformers raises many types for a broken tokenizer; all are one line
        raise DGemmaError(f"could not load the tokenizer in {model_dir}: {_one_line(exc)}") from exc
    return Tokenizer(wrapper, model_dir)
