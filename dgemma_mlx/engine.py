"""The block-diffusion loop (spec §5): encode, denoise a canvas pass by pass, commit, repeat.

Everything per pass stays on the device; the only host sync per pass is one `mx.eval` of the small
[B, L] results, needed anyway to decide whether every row has stopped. Randomness comes from an
injectable `NoiseSource`, drawn in the reference's order: `C (S C)*passes` per canvas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .cache import PromptCache
from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, GenerationResult, GenerationStats, PassEvent
from .generation_config import GenerationConfig
from .model import Model
from .noise import NoiseSource
from .sampler import accept_by_entropy, temperature, tempered_scores

PREFILL_CHUNK = 2048  # long prompts are encoded in chunks; exact up to rounding (spec §4.5)

FixedPositions = Mapping[int, int] | Sequence[Mapping[int, int]] | None


@dataclass(frozen=True)
class Pins:
    """Canvas positions held at given ids on the first canvas: never renoised, always committed."""

    mask: mx.array  # [B, L] bool
    ids: mx.array  # [B, L] int32

    @classmethod
    def build(cls, fixed: FixedPositions, batch: int, length: int, vocab_size: int) -> Pins | None:
        if not fixed:
            return None
        rows = [fixed] * batch if isinstance(fixed, Mapping) else list(fixed)
        if len(rows) != batch:
            raise DGemmaError(f"fixed positions given for {len(rows)} rows, batch has {batch}")
        mask = np.zeros((batch, length), dtype=bool)
        ids = np.zeros((batch, length), dtype=np.int32)
        for b, row in enumerate(rows):
            for pos, tok in (row or {}).items():
                if not 0 <= int(pos) < length:
                    raise DGemmaError(f"fixed position {pos} is outside the canvas (0..{length - 1})")
                if not 0 <= int(tok) < vocab_size:
                    raise DGemmaError(f"fixed token id {tok} is outside the vocabulary (0..{vocab_size - 1})")
                mask[b, int(pos)] = True
                ids[b, int(pos)] = int(tok)
        return cls(mx.array(mask), mx.array(ids))

    def apply(self, tokens: mx.array) -> mx.array:
        return mx.where(self.mask, self.ids, tokens)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[mx.array, mx.array | None]:
    """Stack prompts of different lengths, padding on the left; returns ids and per-row pad counts."""
    longest = max(len(p) for p in prompts)
    pads = [longest - len(p) for p in prompts]
    ids = np.array([[pad_id] * n + list(p) for p, n in zip(prompts, pads, strict=True)], dtype=np.int32)
    return mx.array(ids), (mx.array(pads, dtype=mx.int32) if any(pads) else None)


def new_token_budget(config: GenerationConfig, current_length: int) -> int:
    """max_new_tokens, except the reference lets max_length win over the default 256 (spec §5.1)."""
    if config.max_length and config.max_new_tokens == 256:
        return config.max_length - current_length
    return config.max_new_tokens


def encode(model: Model, ids: mx.array, cache: PromptCache, chunk: int = PREFILL_CHUNK) -> None:
    for start in range(0, ids.shape[1], chunk):
        model.encode(ids[:, start : start + chunk], cache)
        mx.eval(cache.state())


def finalize_canvas(
    tokens: np.ndarray, finished: np.ndarray, config: GenerationConfig, length_reached: bool
) -> tuple[np.ndarray, np.ndarray]:
    """EOS check and pad replacement on a committed canvas (spec §5.6); returns (tokens, finished)."""
    tokens = tokens.copy()
    eos = np.array(config.eos_token_id or (), dtype=np.int64)
    finished_this = np.isin(tokens, eos).any(axis=-1) if eos.size else np.zeros(len(tokens), dtype=bool)
    if length_reached:
        finished_this[:] = True
    now_finished = finished | finished_this
    if config.pad_token_id is not None and now_finished.any():
        tokens[finished] = config.pad_token_id
        if eos.size and finished_this.any():
            is_eos = np.isin(tokens, eos)
            seen = np.cumsum(is_eos, axis=-1)
            tokens[(seen > 0) & ~((seen == 1) & is_eos)] = config.pad_token_id
    return tokens, now_finished


def block_diffusion(
    model: Model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    noise: NoiseSource,
    cache: PromptCache | None = None,
    fixed_positions: FixedPositions = None,
) -> Iterator[PassEvent | CanvasEvent | FinishEvent]:
    """Generate for a batch of token-id prompts, yielding an event per pass and per canvas, then the result.

    With `cache` (a chat session), the prompts are only the tokens not yet encoded, and the cache is
    left holding exactly those prompt tokens afterwards: generated canvases are encoded into a copy.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise DGemmaError("empty prompt: give at least one token")
    B, L, V = len(prompts), model.canvas_length, model.vocab_size
    for p in prompts:
        if bad := [t for t in p if not 0 <= int(t) < V]:
            raise DGemmaError(f"prompt token id {bad[0]} is outside the vocabulary (0..{V - 1})")
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    prompt_ids, padding = left_pad(prompts, pad_id)
    if cache is not None and (padding is not None or cache.batch_size != B):
        raise DGemmaError("a cached session continues one row of equal-length prompts only")
    pins = Pins.build(fixed_positions, B, L, V)

    start = time.perf_counter()
    if cache is None:
        cache = model.make_cache(B)
        cache.left_padding = padding
    P = prompt_ids.shape[1]
    budget = new_token_budget(config, P + cache.offset)
    n_canvases = max(0, math.ceil(budget / L))
    encode(model, prompt_ids, cache)
    cache = cache.copy()  # a session's cache keeps the prompt; this answer's canvases go into the copy
    prompt_time = time.perf_counter() - start
    gen_start = time.perf_counter()

    eos_ids = np.array(config.eos_token_id or (), dtype=np.int64)
    sequences = np.array(prompt_ids)
    finished = np.zeros(B, dtype=bool)
    passes = np.zeros(B, dtype=np.int64)
    canvases_run = 0
    for canvas_index in range(n_canvases):
        if canvas_index > 0:
            model.encode(mx.array(sequences[:, -L:]), cache)
        x = noise.canvas(B, L, V)
        canvas_pins = pins if canvas_index == 0 else None
        if canvas_pins is not None:
            x = canvas_pins.apply(x)
        draft = x
        sc = None
        done = mx.zeros((B,), dtype=mx.bool_)
        done_np = np.zeros(B, dtype=bool)
        history = [mx.full((B, L), -1, dtype=mx.int32)] * (config.stability_threshold or 0)
        pass_index = 0
        for step in range(config.max_denoising_steps, 0, -1):
            pass_index += 1
            passes += ~(done_np | finished)
            raw = model.decode(x, cache, sc)
            temp = 1.0
            if config.uses_temperature:
                temp = temperature(step, config.max_denoising_steps, config.t_min, config.t_max)
            z, ent, sample, new_draft, confidence = tempered_scores(
                raw, mx.array(temp, dtype=mx.float32), noise.gumbel(B, L, V)
            )
            if canvas_pins is not None:
                ent = mx.where(canvas_pins.mask, 0.0, ent)
                sample = canvas_pins.apply(sample)
                new_draft = canvas_pins.apply(new_draft)
            accepted = accept_by_entropy(ent, config.entropy_bound)
            x_new = mx.where(accepted, sample, noise.canvas(B, L, V))
            if canvas_pins is not None:
                x_new = canvas_pins.apply(x_new)
            if config.uses_adaptive_stopping:
                if done_np.any():  # rows that already stopped keep their results
                    new_draft = mx.where(done[:, None], draft, new_draft)
                    x_new = mx.where(done[:, None], x, x_new)
                stable = mx.ones((B,), dtype=mx.bool_)
                for past in history:
                    stable = stable & mx.all(past == new_draft, axis=-1)
                if history:
                    history = history[1:] + [new_draft]
                confident = ent.mean(axis=-1) < config.confidence_threshold
                done = done | (stable & confident)
            sc = z.astype(model.dtype)
            mx.eval(x_new, new_draft, done, accepted, ent, confidence)
            changed = np.array(new_draft != draft)
            draft, x = new_draft, x_new
            done_np = np.array(done)
            yield PassEvent(
                canvas_index=canvas_index,
                step=step,
                pass_index=pass_index,
                max_steps=config.max_denoising_steps,
                temperature=temp,
                draft=np.array(draft),
                canvas=np.array(x),
                accepted=np.array(accepted),
                changed=changed,
                entropy=np.array(ent),
                confidence=np.array(confidence),
                done=done_np.copy(),
                finished=finished.copy(),
                elapsed=time.perf_counter() - start,
            )
            if done_np.all():
                break
        canvases_run += 1
        sequences = np.concatenate([sequences, np.array(draft, dtype=sequences.dtype)], axis=1)
        length_reached = config.max_length is not None and sequences.shape[1] >= config.max_length
        committed, finished = finalize_canvas(sequences[:, -L:], finished, config, length_reached)
        sequences[:, -L:] = committed
        yield CanvasEvent(
            canvas_index=canvas_index,
            tokens=committed.copy(),
            passes=pass_index,
            finished=finished.copy(),
            elapsed=time.perf_counter() - start,
        )
        if finished.all():
            break

    gen_time = time.perf_counter() - gen_start
    peak_memory = mx.get_peak_memory()
    # Return this generation's scratch buffers: without it, MLX's buffer cache keeps growing across the
    # differently-shaped canvases of a long chat or batch process.
    mx.clear_cache()
    new = sequences[:, P:]
    valid = (
        (new != config.pad_token_id).sum(axis=-1)
        if config.pad_token_id is not None
        else np.full(B, new.shape[1])
    )
    new_tokens = []
    for row in new.tolist():
        hits = [i for i, t in enumerate(row) if t in set(eos_ids.tolist())]
        new_tokens.append(row[: hits[0] + 1] if hits else row)
    stats = GenerationStats(
        prompt_tokens=int(P),
        generated_tokens=[int(v) for v in valid],
        passes=[int(p) for p in passes],
        canvases=canvases_run,
        tokens_per_forward=[float(v) / float(p) if p else 0.0 for v, p in zip(valid, passes, strict=True)],
        prompt_time=prompt_time,
        generation_time=gen_time,
        peak_memory_gb=peak_memory / 1e9,
    )
    yield FinishEvent(
        GenerationResult(
            sequences=sequences,
            prompt_lengths=[len(p) for p in prompts],
            new_tokens=new_tokens,
            stats=stats,
            finished=[bool(f) for f in finished],
        )
    )
