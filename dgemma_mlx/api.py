"""The front door: every generation (one-shot, chat turns, batch jobs, the Sudoku solver) runs here.

Prompts may be text (rendered with the checkpoint's own chat template unless `chat_template=False`),
chat messages, token ids, or a list of those for a batch. Generation parameters default to the
checkpoint's `generation_config.json`; keyword overrides use the same names.

Going through `stream_generate` is what gives every caller the same things: the resolved
configuration on the result, peak memory measured per call, mlx-lm's wired-memory limit on Metal,
and each row's text, thoughts and answer decoded once (on `CanvasEvent.rows` as rows finish, and on
the final `GenerationResult`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import mlx.core as mx

from .cache import PromptCache
from .engine import CanvasInit, FixedPositions, StopRequested, block_diffusion
from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent, RowResult
from .fast_presets import expand
from .generation_config import GenerationConfig
from .model import Model
from .noise import MLXNoise, NoiseSource

Message = dict[str, Any]
Prompt = str | Sequence[int] | Sequence[Message]


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and bool(value)
        and all(isinstance(m, dict) for m in value)
    )


def _is_ids(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def _one_prompt(
    tokenizer, prompt: Prompt, chat_template: bool, system: str | None, enable_thinking: bool
) -> list[int]:
    if _is_ids(prompt):
        return [int(t) for t in prompt]
    if tokenizer is None:
        raise DGemmaError("this model ships no tokenizer: pass the prompt as token ids")
    if isinstance(prompt, str):
        if not chat_template or not tokenizer.has_chat_template:
            return tokenizer.encode(prompt)
        prompt = [{"role": "user", "content": prompt}]
    if _is_messages(prompt):
        messages = list(prompt)
        if system and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        return tokenizer.render_chat(messages, add_generation_prompt=True, enable_thinking=enable_thinking)
    raise DGemmaError(
        f"unsupported prompt type {type(prompt).__name__}: use text, token ids or chat messages"
    )


def prompt_to_ids(
    tokenizer,
    prompt: Prompt | Sequence[Prompt],
    chat_template: bool = True,
    system: str | None = None,
    enable_thinking: bool = False,
) -> list[list[int]]:
    """Normalise any accepted prompt form to a batch of token-id lists."""
    batch = (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, str)
        and bool(prompt)
        and not _is_ids(prompt)
        and not _is_messages(prompt)
    )
    items = list(prompt) if batch else [prompt]
    return [_one_prompt(tokenizer, p, chat_template, system, enable_thinking) for p in items]


def resolve_config(
    model: Model, tokenizer=None, config: GenerationConfig | None = None, **overrides: Any
) -> GenerationConfig:
    """Explicit overrides > `config` > the checkpoint's generation_config.json > global defaults.

    `fast="PRESET"` among the overrides sets the opt-in fast-decoding knobs (fast_presets.py)."""
    base = config or GenerationConfig.from_model_dir(getattr(model, "model_dir", None))
    if base.eos_token_id is None:
        eos = sorted(tokenizer.eos_token_ids) if tokenizer is not None else list(model.text.eos_token_id)
        if eos:
            base = base.replace(eos_token_id=eos)
    return base.replace(**expand(overrides))


@contextlib.contextmanager
def _wired(model: Model):
    """mlx-lm's wired-memory context on Metal (keeps a 14 GB model resident); a no-op elsewhere."""
    if mx.metal.is_available():
        from mlx_lm.generate import wired_limit

        with wired_limit(model):
            yield
    else:
        yield


def decode_row(tokenizer, row: RowResult) -> RowResult:
    """The row with its text, thoughts and answer (each decoded once); unchanged without a tokenizer."""
    if tokenizer is None:
        return row
    text = tokenizer.decode(row.tokens, skip_special_tokens=True)
    thinking, answer = tokenizer.split_thinking(tokenizer.decode(row.tokens, skip_special_tokens=False))
    return dataclasses.replace(row, text=text, thinking=thinking, answer=answer)


def stream_generate(
    model: Model,
    tokenizer,
    prompt: Prompt | Sequence[Prompt],
    *,
    config: GenerationConfig | None = None,
    noise: NoiseSource | None = None,
    seed: int | None = None,
    fixed_positions: FixedPositions = None,
    canvas_init: CanvasInit = None,
    chat_template: bool = True,
    system: str | None = None,
    enable_thinking: bool = False,
    cache: PromptCache | None = None,
    stop_requested: StopRequested | None = None,
    **overrides: Any,
) -> Iterator[PassEvent | CanvasEvent | FinishEvent]:
    """Yield a `PassEvent` per denoising pass, a `CanvasEvent` per committed canvas, then a `FinishEvent`.

    `cache` continues a conversation (the prompt is then only the tokens it has not seen, see
    `ChatSession`); `stop_requested` is polled after each pass and ends the generation early, its
    unfinished rows reporting finish reason "stopped". `fixed_positions` holds positions of the
    generated text at given ids; `canvas_init` gives the ids the canvas starts from instead of noise
    (transformers' `decoder_input_ids`: the sampler may still change them).
    """
    prompts = prompt_to_ids(tokenizer, prompt, chat_template, system, enable_thinking)
    gen_config = resolve_config(model, tokenizer, config, **overrides)
    noise = noise if noise is not None else MLXNoise(seed)
    decoded: dict[int, RowResult] = {}
    mx.reset_peak_memory()
    with _wired(model):
        events = block_diffusion(
            model, prompts, gen_config, noise, cache, fixed_positions, stop_requested, canvas_init
        )
        for event in events:
            if isinstance(event, CanvasEvent) and event.rows:
                rows = tuple(decode_row(tokenizer, row) for row in event.rows)
                decoded |= {row.index: row for row in rows}
                event = dataclasses.replace(event, rows=rows)
            elif isinstance(event, FinishEvent) and tokenizer is not None:
                result = event.result
                rows = [decoded.get(b) or decode_row(tokenizer, result.row(b)) for b in range(len(prompts))]
                result.texts = [row.text for row in rows]
                result.thinking = [row.thinking for row in rows]
                result.answers = [row.answer for row in rows]
            yield event


def generate(
    model: Model,
    tokenizer,
    prompt: Prompt | Sequence[Prompt],
    **kwargs: Any,
) -> GenerationResult:
    """Run `stream_generate` to the end and return its result (sequences, texts and stats)."""
    result = None
    for event in stream_generate(model, tokenizer, prompt, **kwargs):
        if isinstance(event, FinishEvent):
            result = event.result
    assert result is not None
    return result
