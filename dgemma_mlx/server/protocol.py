"""The OpenAI request bodies, checked field by field, and the OpenAI error object.

Every way a body can be wrong ends here as an `ApiError` (status, message, type, param, code), the
shape the official clients parse, so a client never sees a traceback. What DiffusionGemma cannot do
is refused the way OpenAI refuses an unsupported value for a model (400, `unsupported_value` or
`unsupported_parameter`, naming the parameter) rather than silently ignored: a sampling temperature
other than the default is meaningless here (the temperature follows the denoising schedule), and
there are no per-token log-probabilities.

Parsing is plain Python on purpose: the error messages are ours, and a body is a few dozen fields.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import DGemmaError
from ..fast_presets import FAST_FIELDS, FAST_KEY, expand
from ..generation_config import GenerationConfig, check_fields

# Diffusion settings a request may carry as extra body fields (generation_config.json's names).
DIFFUSION_FIELDS = (
    "max_denoising_steps",
    "entropy_bound",
    "t_min",
    "t_max",
    "stability_threshold",
    "confidence_threshold",
    *FAST_FIELDS,  # the opt-in fast-decoding knobs; `fast` names a preset of them (fast_presets.py)
)
# Fields accepted and ignored: bookkeeping that changes nothing about the answer.
IGNORED = {"user", "metadata", "store", "service_tier", "stream_options", "parallel_tool_calls"}
# Accepted only at the value that means "off" / the default; anything else is unsupported_value.
DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "temperature": (None, 1, 1.0),
    "top_p": (None, 1, 1.0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "echo": (None, False),
    "best_of": (None, 1),
    "tool_choice": (None, "none"),
}
UNSUPPORTED = ("tools", "functions", "function_call", "audio", "prediction", "suffix", "web_search_options")
COMMON = {"model", "stream", "max_tokens", "n", "seed", "stop", "stream_passes", FAST_KEY, *DIFFUSION_FIELDS}
CHAT_FIELDS = COMMON | {
    "messages",
    "max_completion_tokens",
    "enable_thinking",
    "chat_template_kwargs",
    "response_format",
    "modalities",
    "reasoning_effort",
}
COMPLETION_FIELDS = COMMON | {"prompt"}
MAX_STOP = 4


class ApiError(Exception):
    """An error answered as OpenAI answers it: `{"error": {message, type, param, code}}` + status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 8192
    max_n: int = 8


@dataclass
class Parsed:
    """A checked request, ready for the scheduler (prompts are token ids, one per choice)."""

    model: str
    prompts: list[list[int]]
    seed: int
    config: GenerationConfig
    max_tokens: int | None
    stop: list[str]
    stream: bool
    stream_passes: bool
    enable_thinking: bool = False
    choices_per_prompt: int = 1

    @property
    def seeds(self) -> list[int]:
        """Choice i of a request seeded s samples with seed s + i (as row i of a batch run does)."""
        return [self.seed + i for i in range(len(self.prompts))]


def _bad(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _integer(body: dict, name: str, minimum: int, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(f"'{name}' must be an integer >= {minimum} (got {value!r})", name)
    if maximum is not None and value > maximum:
        raise _bad(f"'{name}' must be at most {maximum} (got {value})", name)
    return value


def _check_fields(body: dict, allowed: set[str]) -> None:
    for name in body:
        if name in UNSUPPORTED:
            raise _bad(
                f"Unsupported parameter: '{name}' is not supported with this model.",
                name,
                "unsupported_parameter",
            )
        if name not in allowed and name not in IGNORED and name not in DEFAULT_ONLY:
            raise _bad(f"Unrecognized request argument supplied: {name}", name)
    for name, defaults in DEFAULT_ONLY.items():
        if name in body and not any(_same(body[name], d) for d in defaults):
            only = next((repr(d) for d in defaults if d is not None), "null")
            raise _bad(
                f"Unsupported value: '{name}' does not support {body[name]!r} with this model. "
                f"Only the default ({only}) value is supported.",
                name,
                "unsupported_value",
            )


def _same(value: Any, default: Any) -> bool:
    if default is None:
        return value is None
    if isinstance(default, bool):
        return value is default
    if isinstance(default, int | float):
        return isinstance(value, int | float) and not isinstance(value, bool) and value == default
    return value == default


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop' must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOP:
        raise _bad(f"'stop' takes at most {MAX_STOP} sequences (got {len(stops)})", "stop")
    return stops


def _config(body: dict, base: GenerationConfig) -> GenerationConfig:
    overrides = {}
    if body.get(FAST_KEY) is not None:
        try:
            knobs = expand({FAST_KEY: body[FAST_KEY]})
            body = {**body, **{k: v for k, v in knobs.items() if body.get(k) is None}}
        except DGemmaError as e:
            raise _bad(str(e), FAST_KEY) from None
    for name in DIFFUSION_FIELDS:
        if body.get(name) is not None:
            try:
                check_fields(**{name: body[name]})
            except DGemmaError as e:
                raise _bad(str(e).replace("invalid generation config: ", ""), name) from None
            overrides[name] = body[name]
    try:
        return base.replace(**overrides)
    except DGemmaError as e:
        raise _bad(str(e), next(iter(overrides), None)) from None


def _common(body: dict, served: str, base: GenerationConfig, limits: Limits, max_tokens_field: str) -> dict:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("you must provide a model parameter", "model")
    if model != served:
        raise ApiError(
            404,
            f"The model '{model}' does not exist; this server serves '{served}'.",
            param="model",
            code="model_not_found",
        )
    for flag in ("stream", "stream_passes", "enable_thinking"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise _bad(f"'{flag}' must be a boolean", flag)
    seed = _integer(body, "seed", -(2**63))
    return {
        "model": model,
        "seed": secrets.randbelow(2**31) if seed is None else seed % (2**31),
        "config": _config(body, base),
        "max_tokens": _integer(body, max_tokens_field, 1) or _integer(body, "max_tokens", 1),
        "stop": _stop(body),
        "stream": bool(body.get("stream")),
        "stream_passes": bool(body.get("stream_passes")),
        "n": _integer(body, "n", 1, limits.max_n) or 1,
    }


def _text_content(content: Any, index: int) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text parts are read."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(
                    f"messages[{index}].content: only text parts are supported (got {kind!r})",
                    f"messages[{index}].content",
                    "unsupported_value",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(
        f"messages[{index}].content must be a string or a list of text parts", f"messages[{index}].content"
    )


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}] must be an object with a 'role'", f"messages[{i}]")
        role = "system" if m["role"] == "developer" else m["role"]
        if role not in ("system", "user", "assistant"):
            raise _bad(
                f"messages[{i}].role {m['role']!r} is not supported (system, developer, user, assistant)",
                f"messages[{i}].role",
                "unsupported_value",
            )
        out.append({"role": role, "content": _text_content(m.get("content"), i)})
    return out


def _thinking(body: dict) -> bool:
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _bad("'chat_template_kwargs' must be an object", "chat_template_kwargs")
    value = (kwargs or {}).get("enable_thinking", body.get("enable_thinking", False))
    if not isinstance(value, bool):
        raise _bad("'enable_thinking' must be a boolean", "enable_thinking")
    return value


def _check_length(prompt: list[int], limits: Limits) -> None:
    if len(prompt) > limits.max_prompt_tokens:
        raise _bad(
            f"This model's maximum context length is {limits.max_prompt_tokens} tokens. However, your "
            f"messages resulted in {len(prompt)} tokens. Please reduce the length of the messages.",
            "messages",
            "context_length_exceeded",
        )


def parse_chat(body: Any, served: str, tokenizer, base: GenerationConfig, limits: Limits) -> Parsed:
    """A `/v1/chat/completions` body -> `Parsed` (the conversation rendered by the checkpoint's template)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    _check_fields(body, CHAT_FIELDS)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise _bad(
            "Unsupported value: 'response_format' supports only {'type': 'text'} with this model.",
            "response_format",
            "unsupported_value",
        )
    if body.get("modalities") not in (None, ["text"]):
        raise _bad(
            "Unsupported value: 'modalities' supports only ['text'].", "modalities", "unsupported_value"
        )
    common = _common(body, served, base, limits, "max_completion_tokens")
    messages = _messages(body)
    thinking = _thinking(body)
    if tokenizer is None or not tokenizer.has_chat_template:
        raise _bad("this model has no chat template: use /v1/completions", "messages", "unsupported_value")
    try:
        ids = tokenizer.render_chat(messages, add_generation_prompt=True, enable_thinking=thinking)
    except DGemmaError as e:
        raise _bad(str(e), "messages") from None
    _check_length(ids, limits)
    n = common.pop("n")
    return Parsed(prompts=[ids] * n, enable_thinking=thinking, choices_per_prompt=n, **common)


def parse_completion(
    body: Any, served: str, tokenizer, base: GenerationConfig, limits: Limits, vocab_size: int
) -> Parsed:
    """A `/v1/completions` body -> `Parsed`: raw text (no chat template), token ids, or a list of either."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    _check_fields(body, COMPLETION_FIELDS)
    common = _common(body, served, base, limits, "max_tokens")
    prompts = _prompt_list(body.get("prompt"), tokenizer, vocab_size)
    for p in prompts:
        _check_length(p, limits)
    n = common.pop("n")
    if len(prompts) * n > limits.max_n:
        raise _bad(f"prompts x n may be at most {limits.max_n} (got {len(prompts) * n})", "n")
    return Parsed(prompts=[p for p in prompts for _ in range(n)], choices_per_prompt=n, **common)


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _prompt_list(prompt: Any, tokenizer, vocab_size: int) -> list[list[int]]:
    if isinstance(prompt, str) or _is_ids(prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        items = prompt
    else:
        raise _bad("'prompt' must be a non-empty string, a list of token ids, or a list of those", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise _bad("'prompt' must not be empty", "prompt")
            if tokenizer is None:
                raise _bad("this model ships no tokenizer: send the prompt as token ids", "prompt")
            ids = tokenizer.encode(item)
        else:
            if bad := [t for t in item if not 0 <= t < vocab_size]:
                raise _bad(
                    f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", "prompt"
                )
            ids = list(item)
        if not ids:
            raise _bad("'prompt' encodes to no tokens", "prompt")
        out.append(ids)
    return out


def finite_json(value: Any) -> bool:
    """Whether a parsed body holds only finite numbers (JSON NaN/Infinity are not JSON)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_json(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_json(v) for v in value)
    return True
