"""Multi-turn chat on one encoder cache: each turn encodes only the tokens the cache has not seen.

The conversation is re-rendered with the checkpoint's own chat template every turn; as long as the
cached tokens are a prefix of the new rendering (the normal case: history only grows), only the
suffix is encoded. Anything else (an edited system prompt, a template that rewrites old turns) falls
back to encoding the whole conversation, which is always correct.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .api import Message, resolve_config, stream_generate
from .cache import PromptCache
from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, PassEvent
from .generation_config import GenerationConfig
from .jsonfile import read_json_object
from .model import Model
from .noise import MLXNoise, NoiseSource

SESSION_FORMAT = "dgemma-chat-session/1"


class ChatSession:
    def __init__(
        self,
        model: Model,
        tokenizer,
        system: str | None = None,
        enable_thinking: bool = False,
        config: GenerationConfig | None = None,
        seed: int | None = None,
    ):
        if tokenizer is None or not tokenizer.has_chat_template:
            raise DGemmaError("chat needs a tokenizer with a chat template (this model has none)")
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.enable_thinking = enable_thinking
        self.config = resolve_config(model, tokenizer, config)
        self.messages: list[Message] = []
        self.noise: NoiseSource = MLXNoise(seed)
        self._cache: PromptCache | None = None
        self._cached_ids: list[int] = []

    # -- state ---------------------------------------------------------------------------------------
    @property
    def cached_tokens(self) -> int:
        return len(self._cached_ids)

    def reset(self) -> None:
        """Forget the conversation and the cache (the system prompt stays)."""
        self.messages = []
        self._cache = None
        self._cached_ids = []

    def set_system(self, system: str | None) -> None:
        self.system = system or None  # the next turn re-renders; a changed prefix re-encodes

    def set_params(self, **overrides: Any) -> None:
        self.config = self.config.replace(**overrides)

    def render(self, messages: list[Message]) -> list[int]:
        full = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        return self.tokenizer.render_chat(
            full, add_generation_prompt=True, enable_thinking=self.enable_thinking
        )

    # -- a turn --------------------------------------------------------------------------------------
    def stream(
        self, user_text: str, noise: NoiseSource | None = None, **overrides: Any
    ) -> Iterator[PassEvent | CanvasEvent | FinishEvent]:
        """Answer one user message through the front door; the turn joins the history only if it
        runs to completion.

        Interrupting (closing the generator, Ctrl-C) leaves history and cache as they were before.
        """
        pending = [*self.messages, {"role": "user", "content": user_text}]
        ids = self.render(pending)
        cached = self._cached_ids
        if self._cache is not None and len(ids) > len(cached) and ids[: len(cached)] == cached:
            cache, new_ids = self._cache.copy(), ids[len(cached) :]
        else:
            cache, new_ids = self.model.make_cache(1), ids
        config = self.config.replace(**overrides)
        events = stream_generate(
            self.model, self.tokenizer, new_ids, config=config, noise=noise or self.noise, cache=cache
        )
        for event in events:
            if isinstance(event, FinishEvent):
                content = self._as_history(event.result.answer)
                self.messages = [*pending, {"role": "assistant", "content": content}]
                self._cache, self._cached_ids = cache, ids
            yield event

    def _as_history(self, answer: str) -> str:
        """An answer as the history holds it: its tokens read back, the form a re-render encodes."""
        return self.tokenizer.decode(self.tokenizer.encode(answer, add_special_tokens=False)).strip()

    def keep_partial(self, user_text: str, committed_ids: Sequence[int]) -> int:
        """Keep an interrupted turn: the user message and the answer's committed tokens so far, as
        llama.cpp and ollama keep a stopped answer. Returns how many tokens were kept.

        `committed_ids` are the tokens of the `CanvasEvent`s seen (pads and anything after an EOS are
        dropped). The answer is stored as its tokens read back, like a finished turn. Nothing is kept
        when no answer text was committed (an empty or thoughts-only start): a user turn without an
        answer would break the template's alternation, so the turn is dropped as before. The cache of
        the interrupted turn is never kept: the next turn re-renders and encodes what the cache lacks.
        """
        eos, pad = self.tokenizer.eos_token_ids, self.tokenizer.pad_token_id
        ids: list[int] = []
        for token in map(int, committed_ids):
            if token in eos:
                break
            if token != pad:
                ids.append(token)
        _, answer = self.tokenizer.split_thinking(self.tokenizer.decode(ids, skip_special_tokens=False))
        content = self._as_history(answer)
        if not ids or not content:
            return 0
        user = {"role": "user", "content": user_text}
        self.messages = [*self.messages, user, {"role": "assistant", "content": content}]
        return len(ids)

    def ask(self, user_text: str, **overrides: Any) -> str:
        """Blocking convenience: the answer's text."""
        for event in self.stream(user_text, **overrides):
            if isinstance(event, FinishEvent):
                return event.result.text
        raise AssertionError("generation ended without a result")

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        data = {
            "format": SESSION_FORMAT,
            "system": self.system,
            "enable_thinking": self.enable_thinking,
            "messages": self.messages,
            "generation": self.config.to_dict(),
        }
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False))

    def load(self, path: str | Path) -> None:
        """Replace the conversation with a saved one; the cache is rebuilt on the next turn."""
        not_ours = "not a dgemma chat session file"
        data = read_json_object(
            path, missing="no such session file", invalid="not a session file", not_object=not_ours
        )
        if data.get("format") != SESSION_FORMAT:
            raise DGemmaError(f"{path}: {not_ours}")
        messages = data.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            raise DGemmaError(f"{path}: malformed messages list")
        self.reset()
        self.messages = messages
        self.system = data.get("system")
        self.enable_thinking = bool(data.get("enable_thinking", False))
        if isinstance(data.get("generation"), dict):
            self.config = GenerationConfig.from_dict(data["generation"])
