"""The block-diffusion loop, in the reference's named steps (docs/ARCHITECTURE.md, "The engine").

    encode_prompt -> for each canvas: start_canvas -> denoise_pass x N -> commit_canvas -> finish

`block_diffusion` only sequences these steps and yields their events; each step is a function that can
be run and tested alone. Everything per pass stays on the device; the one host sync per pass is the
`mx.eval` of the small [B, L] results, needed anyway to decide whether every row has stopped.
Randomness comes from an injectable `NoiseSource`, drawn in the reference's order: `C (S C)*passes`
per canvas. Checked against transformers' `DiffusionGemmaGenerationMixin.generate`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

from . import fast
from .cache import PromptCache
from .checks import finite_logits
from .errors import DGemmaError
from .events import (
    CanvasEvent,
    FinishEvent,
    FinishReason,
    GenerationResult,
    GenerationStats,
    PassEvent,
    RowResult,
)
from .generation_config import GenerationConfig
from .model import Model, TopKProbs
from .noise import NoiseSource
from .sampler import StopRule, accept_by_entropy, temperature, tempered_scores

PREFILL_CHUNK = 2048  # long prompts are encoded in chunks; exact up to rounding

FixedPositions = Mapping[int, int] | Sequence[Mapping[int, int]] | None
CanvasInit = Sequence[int] | Sequence[Sequence[int]] | np.ndarray | mx.array | None
StopRequested = Callable[[], bool]


@dataclass(frozen=True)
class Pins:
    """Positions of the generated text given ids, each on canvas `position // L`.

    Two uses, one shape: `fixed_positions` (held at their ids on every pass: never renoised, always
    committed; templates, infilling, puzzles) and `canvas_init` (the ids a canvas starts from, as the
    reference's `decoder_input_ids`; the sampler may renoise them from the first pass on). Positions
    past the first canvas let a template or a starting text span several canvases.
    """

    mask: mx.array  # [B, K*L] bool
    ids: mx.array  # [B, K*L] int32

    @classmethod
    def build(
        cls, fixed: FixedPositions, batch: int, length: int, vocab_size: int, canvases: int = 1
    ) -> Pins | None:
        if not fixed:
            return None
        rows = [fixed] * batch if isinstance(fixed, Mapping) else list(fixed)
        if len(rows) != batch:
            raise DGemmaError(f"fixed positions given for {len(rows)} rows, batch has {batch}")
        span = length * max(canvases, 1)
        mask = np.zeros((batch, span), dtype=bool)
        ids = np.zeros((batch, span), dtype=np.int32)
        for b, row in enumerate(rows):
            for pos, tok in (row or {}).items():
                if not 0 <= int(pos) < span:
                    where = "canvas" if span == length else f"{span // length} canvases of this run"
                    raise DGemmaError(f"fixed position {pos} is outside the {where} (0..{span - 1})")
                if not 0 <= int(tok) < vocab_size:
                    raise DGemmaError(f"fixed token id {tok} is outside the vocabulary (0..{vocab_size - 1})")
                mask[b, int(pos)] = True
                ids[b, int(pos)] = int(tok)
        return cls(mx.array(mask), mx.array(ids))

    @classmethod
    def starting(
        cls, canvas_init: CanvasInit, batch: int, length: int, vocab_size: int, canvases: int
    ) -> Pins | None:
        """A starting canvas: one id sequence for every row, or one per row (a row may be shorter
        than a canvas: its other positions keep the canvas's noise draw; ids past L seed later canvases)."""
        if canvas_init is None:
            return None
        values = np.array(canvas_init) if isinstance(canvas_init, mx.array) else canvas_init
        if isinstance(values, np.ndarray):
            values = values.tolist()
        values = list(values)
        flat = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values)
        rows = [values] * batch if flat else [list(r) for r in values]
        if len(rows) != batch:
            raise DGemmaError(f"canvas_init given for {len(rows)} rows, batch has {batch}")
        span = length * max(canvases, 1)
        if too_long := [len(r) for r in rows if len(r) > span]:
            raise DGemmaError(f"canvas_init has {too_long[0]} ids; this run's canvases hold {span}")
        fixed = [dict(enumerate(int(t) for t in r)) for r in rows]
        if not any(fixed):
            return None
        try:
            return cls.build(fixed, batch, length, vocab_size, canvases)
        except DGemmaError as e:
            raise DGemmaError(str(e).replace("fixed", "canvas_init")) from None

    def window(self, index: int, length: int) -> Pins | None:
        """The part on canvas `index` ([B, L]), or None when that canvas has no such position."""
        mask = self.mask[:, index * length : (index + 1) * length]
        if mask.shape[1] == 0 or not mask.any().item():
            return None
        return Pins(mask, self.ids[:, index * length : (index + 1) * length])

    def apply(self, tokens: mx.array) -> mx.array:
        return mx.where(self.mask, self.ids, tokens)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[mx.array, mx.array | None]:
    """Stack prompts of different lengths, padding on the left; returns ids and per-row pad counts."""
    longest = max(len(p) for p in prompts)
    pads = [longest - len(p) for p in prompts]
    ids = np.array([[pad_id] * n + list(p) for p, n in zip(prompts, pads, strict=True)], dtype=np.int32)
    return mx.array(ids), (mx.array(pads, dtype=mx.int32) if any(pads) else None)


def new_token_budget(config: GenerationConfig, current_length: int) -> int:
    """max_new_tokens, except that the reference lets max_length win over the default 256."""
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
    """EOS check and pad replacement on a committed canvas; returns (tokens, finished).

    Rows finished on an earlier canvas become all pad; a row that ends now keeps its first EOS and
    is padded after it (the reference's `_finalize_canvas`).
    """
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


@dataclass
class Generation:
    """What lives across canvases: the sequences so far and each row's accounting."""

    config: GenerationConfig
    cache: PromptCache  # the copy this answer's canvases are encoded into
    sequences: np.ndarray  # [B, P + k*L] prompt (left-padded) and committed canvases
    prompt_lengths: list[int]  # per row, without padding
    prompt_width: int  # P: the padded prompt length
    canvases: int  # canvases to run at most
    pins: Pins | None  # fixed positions, over all canvases
    start: float  # perf_counter when encoding began
    prompt_time: float  # seconds spent encoding the prompt
    canvas_init: Pins | None = None  # the ids canvases start from instead of noise (not held)
    finished: np.ndarray = field(init=False)  # [B] bool: EOS committed or the length limit reached
    passes: np.ndarray = field(init=False)  # [B] decoder passes while the row was live
    reasons: list[FinishReason | None] = field(init=False)
    reported: np.ndarray = field(init=False)  # [B] bool: the row's RowResult was already handed out
    generation_start: float = field(init=False)  # perf_counter when the first canvas began
    canvases_run: int = 0

    def __post_init__(self) -> None:
        B = len(self.sequences)
        self.finished = np.zeros(B, dtype=bool)
        self.passes = np.zeros(B, dtype=np.int64)
        self.reasons = [None] * B
        self.reported = np.zeros(B, dtype=bool)
        self.generation_start = time.perf_counter()

    def new_tokens(self, b: int) -> list[int]:
        """Row b's generated ids up to and including its first EOS."""
        eos = set(self.config.eos_token_id or ())
        row = self.sequences[b, self.prompt_width :].tolist()
        return next((row[: i + 1] for i, t in enumerate(row) if t in eos), row)

    def generated_tokens(self, b: int) -> int:
        new = self.sequences[b, self.prompt_width :]
        pad = self.config.pad_token_id
        return int((new != pad).sum()) if pad is not None else len(new)

    def row(self, b: int) -> RowResult:
        reason = self.reasons[b] or "stopped"  # no reason yet: it left before its last canvas
        return RowResult(b, self.new_tokens(b), self.generated_tokens(b), int(self.passes[b]), reason)


@dataclass
class Canvas:
    """One canvas being denoised: the state a pass reads and replaces."""

    index: int
    x: mx.array  # [B, L] the sampled-and-renoised canvas fed to the next pass
    draft: mx.array  # [B, L] argmax of the last pass (what a commit takes)
    pins: Pins | None
    stop_rule: StopRule | None
    # last pass's softmax(z): the next pass's soft-embedding mix (its top k with self_conditioning_top_k)
    self_conditioning: mx.array | TopKProbs | None = None
    frozen: mx.array | None = None  # [B, L] bool, with commit_confidence: positions committed early (fast.py)
    streak: mx.array | None = None  # [B, L] int32, with commit_confidence: passes each draft repeated
    done: mx.array = field(init=False)  # [B] bool on device: the row stopped denoising this canvas
    done_np: np.ndarray = field(init=False)  # the same on the host, after the pass's sync
    passes: int = 0  # passes run on this canvas

    def __post_init__(self) -> None:
        B = self.x.shape[0]
        self.done = mx.zeros((B,), dtype=mx.bool_)
        self.done_np = np.zeros(B, dtype=bool)


# -- the steps -----------------------------------------------------------------------------------------
def encode_prompt(
    model: Model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    cache: PromptCache | None = None,
    fixed_positions: FixedPositions = None,
    canvas_init: CanvasInit = None,
) -> Generation:
    """Check the prompts, encode them causally into the cache, and size the generation.

    With `cache` (a chat session), the prompts are only the tokens not yet encoded, and the cache is
    left holding exactly those prompt tokens afterwards: generated canvases go into a copy. Pins and
    the starting canvas are checked against the run's size before anything is encoded.
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
    budget = new_token_budget(config, prompt_ids.shape[1] + (cache.offset if cache is not None else 0))
    canvases = max(0, math.ceil(budget / L))
    pins = Pins.build(fixed_positions, B, L, V, canvases)
    starting = Pins.starting(canvas_init, B, L, V, canvases)
    start = time.perf_counter()
    if cache is None:
        cache = model.make_cache(B)
        cache.left_padding = padding
    encode(model, prompt_ids, cache)
    return Generation(
        config=config,
        cache=cache.copy(),  # a session's cache keeps the prompt; this answer's canvases go into the copy
        sequences=np.array(prompt_ids),
        prompt_lengths=[len(p) for p in prompts],
        prompt_width=prompt_ids.shape[1],
        canvases=canvases,
        pins=pins,
        start=start,
        prompt_time=time.perf_counter() - start,
        canvas_init=starting,
    )


def start_canvas(model: Model, generation: Generation, index: int, noise: NoiseSource) -> Canvas:
    """Encode the canvas committed before this one (if any), then draw this canvas's noise.

    The noise is drawn even where a starting canvas replaces it, as the reference draws it
    (`_prepare_denoiser_inputs`), so a noise tape stays aligned; the pins of this canvas go on top.
    """
    B, L, V = len(generation.sequences), model.canvas_length, model.vocab_size
    if index > 0:
        model.encode(mx.array(generation.sequences[:, -L:]), generation.cache)
    x = noise.canvas(B, L, V, live=~generation.finished)
    starting = generation.canvas_init.window(index, L) if generation.canvas_init is not None else None
    if starting is not None:
        x = starting.apply(x)
    pins = generation.pins.window(index, L) if generation.pins is not None else None
    if pins is not None:
        x = pins.apply(x)
    config = generation.config
    stop_rule = None
    if config.uses_adaptive_stopping:
        stop_rule = StopRule(config.stability_threshold, config.confidence_threshold, B, L)  # type: ignore[arg-type]
    return Canvas(index, x, x, pins, stop_rule)


def denoise_pass(
    model: Model, generation: Generation, canvas: Canvas, step: int, noise: NoiseSource
) -> PassEvent:
    """One pass: decode, score, accept, renoise, stop check; updates `canvas` and the row counts.

    `step` counts down from max_denoising_steps to 1, as in the reference.
    """
    config = generation.config
    B, L, V = canvas.x.shape[0], model.canvas_length, model.vocab_size
    canvas.passes += 1
    live = ~(canvas.done_np | generation.finished)
    generation.passes += live
    raw = model.decode(canvas.x, generation.cache, self_conditioning_probs=canvas.self_conditioning)
    temp = 1.0
    if config.uses_temperature:
        temp = temperature(step, config.max_denoising_steps, config.t_min, config.t_max)  # type: ignore[arg-type]
    scores = tempered_scores(raw, mx.array(temp, dtype=mx.float32), noise.sample_noise(B, L, V, live))
    ent, sample, draft, confidence = scores.entropy, scores.sample, scores.draft, scores.confidence
    pins = canvas.pins
    if pins is not None:
        ent = mx.where(pins.mask, 0.0, ent)
        sample, draft = pins.apply(sample), pins.apply(draft)
    ent, sample, draft = fast.hold_frozen(canvas, ent, sample, draft)  # opt-in knobs: no-ops by default
    accepted = accept_by_entropy(ent, config.entropy_bound)
    x = mx.where(accepted, sample, noise.canvas(B, L, V, live))
    x, accepted = fast.accept(config, x, accepted, draft, confidence, canvas)
    if pins is not None:
        x = pins.apply(x)
    done = canvas.done
    if canvas.stop_rule is not None:
        if canvas.done_np.any():  # rows that already stopped keep their results
            draft = mx.where(done[:, None], canvas.draft, draft)
            x = mx.where(done[:, None], canvas.x, x)
        done = done | canvas.stop_rule(draft, ent)
    done = fast.update(config, canvas, draft, confidence, done)
    canvas.self_conditioning = fast.self_conditioning(model, config, scores.z, scores.probs)
    mx.eval(x, draft, done, accepted, ent, confidence)
    if canvas.passes == 1:
        finite_logits(raw)
    changed = np.array(draft != canvas.draft)
    canvas.x, canvas.draft, canvas.done = x, draft, done
    canvas.done_np = np.array(done)
    return PassEvent(
        canvas_index=canvas.index,
        step=step,
        pass_index=canvas.passes,
        max_steps=config.max_denoising_steps,
        temperature=temp,
        draft=np.array(draft),
        canvas=np.array(x),
        accepted=np.array(accepted),
        changed=changed,
        entropy=np.array(ent),
        confidence=np.array(confidence),
        done=canvas.done_np.copy(),
        finished=generation.finished.copy(),
        elapsed=time.perf_counter() - generation.start,
    )


def commit_canvas(generation: Generation, canvas: Canvas) -> CanvasEvent:
    """Append the canvas's last draft, apply EOS and padding, and hand out the rows that became final.

    A row is final once it has ended (EOS, or the budget ran out with this canvas) and, when there
    is no pad id to blank the canvases after its EOS, only when the whole generation ends.
    """
    config = generation.config
    L = canvas.draft.shape[1]
    sequences = np.concatenate(
        [generation.sequences, np.array(canvas.draft, dtype=generation.sequences.dtype)], axis=1
    )
    generation.canvases_run += 1
    length_reached = config.max_length is not None and sequences.shape[1] >= config.max_length
    committed, finished = finalize_canvas(sequences[:, -L:], generation.finished, config, length_reached)
    sequences[:, -L:] = committed
    eos = np.isin(committed, np.array(config.eos_token_id or (), dtype=np.int64)).any(axis=-1)
    last = generation.canvases_run >= generation.canvases or finished.all()
    for b in np.flatnonzero(~generation.finished & (finished | last)):
        generation.reasons[b] = "eos" if eos[b] else "length"
    generation.sequences, generation.finished = sequences, finished
    ready = ~generation.reported & (last | (finished & (config.pad_token_id is not None)))
    generation.reported |= ready
    return CanvasEvent(
        canvas_index=canvas.index,
        tokens=committed.copy(),
        passes=canvas.passes,
        finished=finished.copy(),
        elapsed=time.perf_counter() - generation.start,
        rows=tuple(generation.row(int(b)) for b in np.flatnonzero(ready)),
    )


def finish(generation: Generation) -> GenerationResult:
    """The result: sequences, per-row tokens, passes and finish reasons, and the run's statistics."""
    rows = [generation.row(b) for b in range(len(generation.sequences))]
    peak_memory = mx.get_peak_memory()
    # Return this generation's scratch buffers: without it, MLX's buffer cache keeps growing across the
    # differently-shaped canvases of a long chat or batch process.
    mx.clear_cache()
    stats = GenerationStats(
        prompt_tokens=generation.prompt_width,
        generated_tokens=[r.generated_tokens for r in rows],
        passes=[r.passes for r in rows],
        canvases=generation.canvases_run,
        tokens_per_forward=[r.tokens_per_forward for r in rows],
        prompt_time=generation.prompt_time,
        generation_time=time.perf_counter() - generation.generation_start,
        peak_memory_gb=peak_memory / 1e9,
    )
    return GenerationResult(
        sequences=generation.sequences,
        prompt_lengths=generation.prompt_lengths,
        new_tokens=[r.tokens for r in rows],
        stats=stats,
        finished=[bool(f) for f in generation.finished],
        finish_reasons=[r.finish_reason for r in rows],
        config=generation.config,
    )


# -- the loop ------------------------------------------------------------------------------------------
def block_diffusion(
    model: Model,
    prompts: Sequence[Sequence[int]],
    config: GenerationConfig,
    noise: NoiseSource,
    cache: PromptCache | None = None,
    fixed_positions: FixedPositions = None,
    stop_requested: StopRequested | None = None,
    canvas_init: CanvasInit = None,
) -> Iterator[PassEvent | CanvasEvent | FinishEvent]:
    """Generate for a batch of token-id prompts: an event per pass and per canvas, then the result.

    `stop_requested` is polled after every pass; once it returns True, generation ends there and the
    rows not yet finished report "stopped" (their uncommitted canvas is dropped). `canvas_init` is the
    starting canvas (transformers' `decoder_input_ids`), see `Pins.starting`.
    """
    generation = encode_prompt(model, prompts, config, cache, fixed_positions, canvas_init)
    for index in range(generation.canvases):
        canvas = start_canvas(model, generation, index, noise)
        for step in range(config.max_denoising_steps, 0, -1):
            yield denoise_pass(model, generation, canvas, step, noise)
            if stop_requested is not None and stop_requested():
                yield FinishEvent(finish(generation))
                return
            if canvas.done_np.all():
                break
        yield commit_canvas(generation, canvas)
        if generation.finished.all():
            break
    yield FinishEvent(finish(generation))
