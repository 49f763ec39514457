"""From committed tokens to what a client reads: text deltas, the thinking split, stop strings, chunks.

A canvas is where text becomes final, so each choice's text is recomputed from all its committed
tokens whenever a canvas commits, and only what is new is sent. Thoughts are split off on token ids
decoded with their markers (`Tokenizer.split_thinking`), after the whole canvas is in: a thinking
marker can never be cut by a canvas boundary into the answer (a trap other ports fell into,
docs/ARCHITECTURE.md, "The server"). The answer holds back as many characters as a stop string could
still be completing, so a stop string is never half-sent.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .scheduler import Committed, PassFrame

FINISH = {"eos": "stop", "length": "length", "stop": "stop"}


class ChoiceText:
    """One choice's text so far, and what of it has been sent."""

    def __init__(self, tokenizer, stop: list[str], split_thinking: bool):
        self.tokenizer = tokenizer
        self.stop = stop
        self.split = split_thinking
        self.reasoning = ""  # sent so far
        self.content = ""  # sent so far
        self.stopped = False  # a stop string appeared: the choice ends here

    def _texts(self, tokens: list[int]) -> tuple[str, str]:
        if self.tokenizer is None:
            return "", " ".join(map(str, tokens))
        if not self.split:
            return "", self.tokenizer.decode(tokens, skip_special_tokens=True)
        return self.tokenizer.split_thinking(self.tokenizer.decode(tokens, skip_special_tokens=False))

    def update(self, tokens: list[int], final: bool) -> tuple[str, str]:
        """The new (reasoning, content) text after a commit of `tokens` (all of them so far)."""
        thinking, answer = self._texts(tokens)
        if self.stop:
            hits = [i for i in (answer.find(s) for s in self.stop) if i >= 0]
            if hits:
                answer, self.stopped = answer[: min(hits)], True
            elif not final:
                answer = answer[: max(0, len(answer) - (max(map(len, self.stop)) - 1))]
        reasoning_delta, self.reasoning = _delta(self.reasoning, thinking)
        content_delta, self.content = _delta(self.content, answer)
        return reasoning_delta, content_delta


def _delta(sent: str, now: str) -> tuple[str, str]:
    """What `now` adds to `sent`. Decoded text only grows at its end as canvases commit; should a
    decoder ever rewrite earlier text, nothing is sent until it extends what was sent again."""
    if now.startswith(sent):
        return now[len(sent) :], now
    return "", sent


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


class ChunkWriter:
    """The OpenAI objects of one response: chunks while streaming, the whole object at the end."""

    def __init__(self, kind: str, model: str):
        self.kind = kind
        self.model = model
        self.id = new_id(kind)
        self.created = int(time.time())
        self.object = "chat.completion" if kind == "chat" else "text_completion"

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        obj = self.object + (".chunk" if chunk and self.kind == "chat" else "")
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "dgemma-mlx",
            "choices": choices,
        }

    def delta(
        self,
        index: int,
        reasoning: str = "",
        content: str = "",
        role: bool = False,
        finish: str | None = None,
    ) -> dict[str, Any]:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if reasoning:
                delta["reasoning_content"] = reasoning
            if content or role:
                delta["content"] = content
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": content, "logprobs": None, "finish_reason": finish}
        return self._envelope([choice], chunk=True)

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._envelope([], chunk=True), "usage": usage}

    def pass_frame(self, frame: PassFrame, tokenizer) -> dict[str, Any]:
        """A pass of one choice, for pages that show the denoising: an OpenAI chunk with no choices
        (clients skip it) and the canvas in `dgemma_pass`."""
        strings = tokenizer.token_strings(frame.draft) if tokenizer is not None else []
        body = {
            "choice": frame.choice,
            "canvas": frame.canvas,
            "pass": frame.pass_index,
            "step": frame.step,
            "temperature": frame.temperature,
            "tokens": frame.draft,
            "text": strings,
            "accepted": frame.accepted,
            "done": frame.done,
            "batch_rows": frame.rows,
        }
        return {**self._envelope([], chunk=True), "dgemma_pass": body}

    def whole(self, texts: list[ChoiceText], finishes: list[str], usage: dict[str, Any]) -> dict[str, Any]:
        choices = []
        for i, (text, finish) in enumerate(zip(texts, finishes, strict=True)):
            if self.kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": text.content}
                if text.reasoning or text.split:
                    message["reasoning_content"] = text.reasoning or None
                choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": finish})
            else:
                choices.append({"index": i, "text": text.content, "logprobs": None, "finish_reason": finish})
        return {**self._envelope(choices, chunk=False), "usage": usage}


def usage(prompt_tokens: int, cached: int, results: list[Committed | None], seed: int) -> dict[str, Any]:
    """OpenAI's usage object, plus the diffusion figures under `dgemma` (passes, tokens per forward)."""
    done = [r for r in results if r is not None]
    completion = sum(len(r.tokens) for r in done)
    passes = sum(r.passes for r in done)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "dgemma": {
            "passes": passes,
            "tokens_per_forward": round(completion / passes, 4) if passes else 0.0,
            "canvases": sum(r.canvases for r in done),
            "seed": seed,
            "batch_rows": max((r.batch_rows for r in done), default=0),
        },
    }
