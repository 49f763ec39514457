"""What the generation engine reports: one event per denoising pass, one per committed canvas, one at the end.

Views (the Rich live canvas, JSON output, benchmarks) consume these and nothing else, so they never
reach into the engine. Arrays are numpy copies of small [B, L] tensors taken after the pass's single
host sync; the [B, L, V] logits never leave the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from .generation_config import GenerationConfig

FinishReason = Literal["eos", "length", "stopped"]


@dataclass(frozen=True)
class PassEvent:
    """One denoising pass over the current canvas."""

    canvas_index: int  # 0-based canvas (block) number
    step: int  # step index t, counting down from max_steps
    pass_index: int  # 1-based pass number within this canvas
    max_steps: int
    temperature: float
    draft: np.ndarray  # [B, L] argmax prediction: what would be committed now
    canvas: np.ndarray  # [B, L] sampled-and-renoised canvas fed to the next pass
    accepted: np.ndarray  # [B, L] bool: positions whose sample was kept this pass
    changed: np.ndarray  # [B, L] bool: draft differs from the previous pass's draft
    entropy: np.ndarray  # [B, L] float32 per-position entropy (nats) of the tempered logits
    confidence: np.ndarray  # [B, L] float32 probability of the draft token
    done: np.ndarray  # [B] bool: row stopped denoising (stable and confident)
    finished: np.ndarray  # [B] bool: row ended by EOS in an earlier canvas
    elapsed: float  # seconds since generation started

    @property
    def mean_entropy(self) -> np.ndarray:
        return self.entropy.mean(axis=-1)

    @property
    def accepted_count(self) -> np.ndarray:
        return self.accepted.sum(axis=-1)


@dataclass(frozen=True)
class RowResult:
    """One row's final output, ready to print or write: a batch job writes it the moment it exists.

    `finish_reason` is "eos" (the model ended its answer), "length" (the token budget ran out first:
    the answer may be cut short) or "stopped" (the caller stopped generation early).
    """

    index: int  # row in the batch
    tokens: list[int]  # generated ids up to and including the first EOS
    generated_tokens: int  # committed ids that are not padding
    passes: int  # decoder passes while the row was live
    finish_reason: FinishReason
    text: str = ""  # decoded without special tokens (thoughts included)
    thinking: str = ""  # the thinking channel, when the model used it
    answer: str = ""  # the text without thoughts and special tokens

    @property
    def tokens_per_forward(self) -> float:
        return self.generated_tokens / self.passes if self.passes else 0.0

    @property
    def finished(self) -> bool:
        """The model ended the answer itself (not cut at the budget, not stopped)."""
        return self.finish_reason == "eos"


@dataclass(frozen=True)
class CanvasEvent:
    """A canvas committed to the sequence (after EOS padding)."""

    canvas_index: int
    tokens: np.ndarray  # [B, L] committed ids, pads included
    passes: int  # passes this canvas took
    finished: np.ndarray  # [B] bool: row has produced EOS (now or earlier)
    elapsed: float
    rows: tuple[RowResult, ...] = ()  # rows whose output became final with this canvas


@dataclass
class GenerationStats:
    prompt_tokens: int
    generated_tokens: list[int]  # per row, pads excluded
    passes: list[int]  # per row: decoder passes while the row was still live
    canvases: int
    tokens_per_forward: list[float]
    prompt_time: float  # seconds spent encoding the prompt
    generation_time: float  # seconds from the first pass to the end
    peak_memory_gb: float

    @property
    def tokens_per_second(self) -> float:
        return sum(self.generated_tokens) / self.generation_time if self.generation_time > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "passes": self.passes,
            "canvases": self.canvases,
            "tokens_per_forward": self.tokens_per_forward,
            "prompt_time": round(self.prompt_time, 4),
            "generation_time": round(self.generation_time, 4),
            "tokens_per_second": round(self.tokens_per_second, 2),
            "peak_memory_gb": round(self.peak_memory_gb, 3),
        }


@dataclass
class GenerationResult:
    """Final output: full sequences (prompt + committed canvases), new tokens, decoded text, stats."""

    sequences: np.ndarray  # [B, P + k*L], left padding included for batched prompts
    prompt_lengths: list[int]  # per row, without padding
    new_tokens: list[list[int]]  # per row: generated ids up to and including the first EOS
    stats: GenerationStats
    texts: list[str] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # per row: stopped at EOS (not at the budget)
    finish_reasons: list[FinishReason] = field(default_factory=list)  # per row, see RowResult
    thinking: list[str] = field(default_factory=list)  # per row: the thinking channel ("" if none)
    answers: list[str] = field(default_factory=list)  # per row: text without thoughts or specials
    config: GenerationConfig | None = None  # the resolved parameters this generation ran with

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def answer(self) -> str:
        return self.answers[0] if self.answers else self.text

    def row(self, b: int) -> RowResult:
        """Row `b` as a RowResult (the same record a batch job writes)."""
        return RowResult(
            index=b,
            tokens=self.new_tokens[b],
            generated_tokens=self.stats.generated_tokens[b],
            passes=self.stats.passes[b],
            finish_reason=self.finish_reasons[b],
            text=self.texts[b] if self.texts else "",
            thinking=self.thinking[b] if self.thinking else "",
            answer=self.answers[b] if self.answers else "",
        )

    @property
    def tokens_per_forward(self) -> np.ndarray:
        return np.array(self.stats.tokens_per_forward)


@dataclass(frozen=True)
class FinishEvent:
    result: GenerationResult


Event = PassEvent | CanvasEvent | FinishEvent
