"""`dgemma bench`: how fast DiffusionGemma runs on this machine, measured through the real engine.

Every figure comes from a real generation through the front door (`api.stream_generate`, seeded noise,
EOS off so each canvas does the same work) and from timing the model's forward alone on the same
shapes, so "forward" and "outside the forward" (sampler, bookkeeping, host syncs) split the pass as the
user pays it. With `ar`, mlx-lm's `gemma4_text` at the same geometry and weights decodes the same
prompt, interleaved with the diffusion runs in one process so that the break-even ratio holds on a
loaded machine. Times are aggregated over repeats (median, or the best), after one warm-up run per
configuration. Nothing here asserts a speed; tests check only that the figures are consistent.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from . import fast
from .api import stream_generate
from .bench_models import apply_precision, autoregressive_twin, random_model, weight_bytes
from .config import parameter_counts
from .engine import encode
from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent
from .generation_config import GenerationConfig
from .geometry import SUDOKU, Precision, geometry_config
from .model import Model
from .noise import MLXNoise

RANDOM_PASSES = 8  # random weights never converge: every canvas runs exactly this many passes
FORWARD_RUNS = 3  # forward-alone timings per canvas and repeat (their median is used) ...
FORWARD_BUDGET_S = 2.0  # ... unless they already took this long: a slow forward is noisy relatively less
FIRST_ID = 3  # prompts are random ids above <pad> 0, <eos> 1, <bos> 2

# The keys of each row of the report, in order (documented in `dgemma bench --help`).
ROW_KEYS = (
    "precision", "sampler", "dtype", "prompt_tokens", "canvases", "weights_gb", "prefill_tok_s", "pass_ms",
    "forward_ms", "outside_ms", "outside_pct", "passes_per_canvas", "tokens_per_forward", "ttfc_ms",
    "tok_s", "peak_memory_gb", "ar_prefill_tok_s", "ar_ms_per_token", "ar_peak_memory_gb",
    "break_even_tokens_per_pass",
)  # fmt: skip


@dataclass(frozen=True)
class BenchSpec:
    """What to measure: one model source, and the grid prompt lengths x canvases x precisions."""

    geometry: str = "mid"  # a name in geometry.GEOMETRIES; ignored when `model` is given
    model: str | None = None  # a checkpoint: directory, name in $DGEMMA_HOME, or hub id
    layers: int | None = None  # cut a random geometry to its first N layers
    prompt_lengths: tuple[int, ...] = (128,)
    canvases: tuple[int, ...] = (1,)
    precisions: tuple[Precision, ...] = ()
    passes: int | None = None  # most passes per canvas; None: RANDOM_PASSES, or the checkpoint's own
    repeats: int = 3
    best: bool = False  # best of the repeats instead of their median
    ar: bool = False
    ar_tokens: int = 32
    seed: int = 0
    force: bool = False  # load a checkpoint past the memory guard
    fast: tuple[tuple[str, Any], ...] = ()  # fast-decoding knobs: each grid point also runs with them
    fast_label: str = "fast"  # the sampler column of those rows (a preset's name, or "knobs")

    @property
    def random_weights(self) -> bool:
        return self.model is None and self.geometry != SUDOKU

    def steps(self) -> int:
        """Progress steps: per precision one build, per configuration one warm-up and the repeats
        (a repeat runs every sampler)."""
        configs = len(self.prompt_lengths) * len(self.canvases)
        return len(self.precisions) * (1 + configs * (1 + self.repeats))

    def samplers(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, knob overrides) per sampler measured: the exact one, then the fast one if asked."""
        return [("exact", {})] + ([(self.fast_label, dict(self.fast))] if self.fast else [])


@dataclass
class BenchReport:
    """The run's setup (geometry, parameters, device, settings) and one row per configuration."""

    setup: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"setup": self.setup, "rows": self.rows}


@dataclass
class Sample:
    """One timed repeat, in seconds (rates are derived after aggregation)."""

    prefill_s: float
    pass_s: float  # median of the passes after each canvas's first (self-conditioned), over canvases
    forward_s: float  # model.decode alone on the same shapes, weighted like the passes
    ttfc_s: float  # prompt encode to the first committed canvas
    generation_s: float
    generated_tokens: int
    passes_per_canvas: float
    tokens_per_forward: float
    peak_memory_gb: float
    ar_prefill_s: float | None = None
    ar_token_s: float | None = None
    ar_peak_memory_gb: float | None = None


Progress = Callable[[str], None]


# -- the models --------------------------------------------------------------------------------------
def load_model(spec: BenchSpec, precision: Precision) -> Model:
    """The model a precision is measured on: random weights at the geometry, or a checkpoint (the
    bundled Sudoku one for `sudoku`) cast or quantized in memory."""
    if spec.random_weights:
        return random_model(geometry_config(spec.geometry, spec.layers), precision, spec.seed)
    from .loading import load

    if spec.model is not None:
        source = spec.model
        model, _ = load(source, force=spec.force)
    else:
        from .sudoku import ASSETS

        source = SUDOKU
        model, _ = load(ASSETS)
    apply_precision(model, precision, source)
    return model


def generation_config(
    spec: BenchSpec, model: Model, canvases: int, passes: int | None = None, knobs: dict | None = None
) -> GenerationConfig:
    """The checkpoint's own sampler settings (defaults for random weights), with exactly `canvases`
    canvases: EOS and padding off, so every row commits the same work whatever the model drafts;
    `knobs` are fast-decoding overrides (fast_presets.py)."""
    base = GenerationConfig() if spec.random_weights else GenerationConfig.from_model_dir(
        getattr(model, "model_dir", None)
    )
    steps = passes or spec.passes or (RANDOM_PASSES if spec.random_weights else base.max_denoising_steps)
    config = base.replace(
        max_new_tokens=canvases * model.canvas_length, max_denoising_steps=steps, **(knobs or {})
    )
    return config.replace_explicit(eos_token_id=(), pad_token_id=None, max_length=None)


def prompt_ids(model: Model, length: int, seed: int) -> list[int]:
    """A seeded random prompt of `length` ids, avoiding the special ids 0-2 where the vocabulary allows."""
    low = FIRST_ID if model.vocab_size > FIRST_ID else 0
    return mx.random.randint(low, model.vocab_size, (length,), key=mx.random.key(seed)).tolist()


# -- one repeat ----------------------------------------------------------------------------------------
def diffusion_run(model: Model, prompt: list[int], config: GenerationConfig, seed: int) -> tuple[
    dict[int, list[float]], float, list[int], GenerationResult
]:
    """Run the engine once; per canvas, the times of its passes after the first (from the events'
    `elapsed`), the time to the first committed canvas, the passes of each canvas, and the result."""
    passes: dict[int, list[float]] = {}
    last: dict[int, float] = {}
    ttfc, per_canvas, result = 0.0, [], None
    for event in stream_generate(model, None, prompt, config=config, noise=MLXNoise(seed)):
        if isinstance(event, PassEvent):
            if event.canvas_index in last:
                passes.setdefault(event.canvas_index, []).append(event.elapsed - last[event.canvas_index])
            last[event.canvas_index] = event.elapsed
        elif isinstance(event, CanvasEvent):
            ttfc = ttfc or event.elapsed
            per_canvas.append(event.passes)
        elif isinstance(event, FinishEvent):
            result = event.result
    assert result is not None
    return passes, ttfc, per_canvas, result


def self_conditioning_input(model: Model, logits: mx.array) -> mx.array:
    """What the engine hands `Model.decode` from the previous pass (`Model.self_conditioning_probs`),
    so the forward is timed as the pass runs it; the softmax that made the probabilities is the
    sampler's, outside the forward."""
    return model.self_conditioning_probs(logits, mx.softmax(logits, axis=-1))


def forward_times(model: Model, prompt: list[int], result: GenerationResult, seed: int) -> list[float]:
    """`model.decode` with self-conditioning, alone, for each canvas on a cache holding what that
    canvas's passes saw (the prompt, then every canvas committed before it): the median of up to
    `FORWARD_RUNS` runs (fewer once they take `FORWARD_BUDGET_S`), as a pass is the median of its
    canvas's passes. With `self_conditioning_top_k` the input is the top k, as such a pass runs it."""
    L, P = model.canvas_length, len(prompt)
    cache = model.make_cache(1)
    encode(model, mx.array([prompt]), cache)
    canvas = mx.random.randint(0, model.vocab_size, (1, L), key=mx.random.key(seed))
    times = []
    for k in range(result.stats.canvases):
        if k > 0:
            encode(model, mx.array(result.sequences[:, P + (k - 1) * L : P + k * L]), cache)
        logits = model.decode(canvas, cache)
        probs = fast.self_conditioning(model, result.config, logits, mx.softmax(logits, axis=-1))
        mx.eval(probs)
        runs: list[float] = []
        while not runs or (len(runs) < FORWARD_RUNS and sum(runs) < FORWARD_BUDGET_S):
            start = time.perf_counter()
            mx.eval(model.decode(canvas, cache, self_conditioning_probs=probs))
            runs.append(time.perf_counter() - start)
        times.append(statistics.median(runs))
    return times


def ar_run(twin: Any, prompt: list[int], tokens: int) -> tuple[float, float, float]:
    """mlx-lm's own decode loop (`generate_step`, greedy): seconds to the first token (prefill, as
    mlx-lm reports it), seconds per token after it, and peak memory in GB."""
    from mlx_lm.generate import generate_step

    mx.reset_peak_memory()
    start = time.perf_counter()
    stamps = [time.perf_counter() for _ in generate_step(mx.array(prompt), twin, max_tokens=tokens)]
    per_token = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return stamps[0] - start, per_token, mx.get_peak_memory() / 1e9


def one_sample(
    spec: BenchSpec, model: Model, twin: Any, prompt: list[int], config: GenerationConfig
) -> Sample:
    """One repeat: the diffusion run, the forward alone on its shapes, then (with `ar`) mlx-lm's run."""
    passes, ttfc, per_canvas, result = diffusion_run(model, prompt, config, spec.seed)
    canvases = sorted(k for k in passes if passes[k])
    if not canvases:
        raise DGemmaError("every canvas stopped after one pass: give --passes 2 or more")
    forwards = forward_times(model, prompt, result, spec.seed)
    # Each canvas counts as many times as it has steady passes (with adaptive stopping they differ).
    weights = [len(passes[k]) for k in canvases]
    pass_s = sum(statistics.median(passes[k]) * w for k, w in zip(canvases, weights, strict=True))
    forward_s = sum(forwards[k] * w for k, w in zip(canvases, weights, strict=True))
    stats = result.stats
    sample = Sample(
        prefill_s=stats.prompt_time,
        pass_s=pass_s / sum(weights),
        forward_s=forward_s / sum(weights),
        ttfc_s=ttfc,
        generation_s=stats.generation_time,
        generated_tokens=sum(stats.generated_tokens),
        passes_per_canvas=sum(per_canvas) / len(per_canvas),
        tokens_per_forward=stats.tokens_per_forward[0],
        peak_memory_gb=stats.peak_memory_gb,
    )
    if twin is not None:
        ar = ar_run(twin, prompt, spec.ar_tokens)
        sample.ar_prefill_s, sample.ar_token_s, sample.ar_peak_memory_gb = ar
    return sample


# -- aggregation -----------------------------------------------------------------------------------------
def _pick(values: Sequence[float], best: bool, higher_is_better: bool = False) -> float:
    if best:
        return max(values) if higher_is_better else min(values)
    return statistics.median(values)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def summarize(samples: list[Sample], best: bool, prompt_tokens: int) -> dict[str, Any]:
    """Aggregate the repeats: times by median (or minimum), rates derived from the aggregated times, and
    outside = pass - forward, break-even = pass / AR token, so every row is consistent by construction
    (outside can be slightly negative on a noisy machine when the forward is most of the pass)."""

    def agg(name: str) -> float:
        return _pick([getattr(s, name) for s in samples], best)

    pass_ms, forward_ms = agg("pass_s") * 1e3, agg("forward_s") * 1e3
    row: dict[str, Any] = {
        "prefill_tok_s": _round(prompt_tokens / agg("prefill_s"), 1),
        "pass_ms": _round(pass_ms, 3),
        "forward_ms": _round(forward_ms, 3),
        "outside_ms": _round(pass_ms - forward_ms, 3),
        "outside_pct": _round(100 * (pass_ms - forward_ms) / pass_ms, 1),
        "passes_per_canvas": _round(statistics.median(s.passes_per_canvas for s in samples), 2),
        "tokens_per_forward": _round(statistics.median(s.tokens_per_forward for s in samples), 2),
        "ttfc_ms": _round(agg("ttfc_s") * 1e3, 1),
        "tok_s": _round(samples[0].generated_tokens / agg("generation_s"), 2),
        "peak_memory_gb": _round(agg("peak_memory_gb"), 3),
        "ar_prefill_tok_s": None,
        "ar_ms_per_token": None,
        "ar_peak_memory_gb": None,
        "break_even_tokens_per_pass": None,
    }
    if samples[0].ar_token_s is not None:
        ar_ms = agg("ar_token_s") * 1e3
        row["ar_prefill_tok_s"] = _round(prompt_tokens / agg("ar_prefill_s"), 1)
        row["ar_ms_per_token"] = _round(ar_ms, 3)
        row["ar_peak_memory_gb"] = _round(agg("ar_peak_memory_gb"), 3)
        row["break_even_tokens_per_pass"] = _round(row["pass_ms"] / row["ar_ms_per_token"], 2)
    return row


# -- the whole run ------------------------------------------------------------------------------------
def describe(spec: BenchSpec, model: Model) -> dict[str, Any]:
    """The report's setup block: what was measured, where, and how."""
    text = model.text
    counts = parameter_counts(text)
    name = spec.model if spec.model is not None else spec.geometry
    return {
        "geometry": name,
        "weights": "random" if spec.random_weights else "checkpoint",
        "layers": text.num_hidden_layers,
        "hidden_size": text.hidden_size,
        "vocab_size": text.vocab_size,
        "experts": f"{text.num_experts} top-{text.top_k_experts}",
        "canvas_length": model.canvas_length,
        "parameters_total": counts["total"],
        "parameters_active": counts["active"],
        "device": device_name(),
        "mlx_version": mx.__version__,
        "max_denoising_steps": generation_config(spec, model, 1).max_denoising_steps,
        "repeats": spec.repeats,
        "statistic": "best" if spec.best else "median",
        "ar_tokens": spec.ar_tokens if spec.ar else None,
        "seed": spec.seed,
        "fast": {"label": spec.fast_label, **dict(spec.fast)} if spec.fast else None,
    }


def device_name() -> str:
    """`gpu (NVIDIA H200)`, `cpu (AMD EPYC)`: the default device and what MLX says it is."""
    kind = mx.default_device().type.name
    try:
        info = mx.device_info()
    except (AttributeError, RuntimeError):  # older MLX, or a backend without the query
        return kind
    name = info.get("device_name") or info.get("architecture")
    return f"{kind} ({name})" if name else kind


def _configurations(spec: BenchSpec) -> Iterator[tuple[int, int]]:
    for length in spec.prompt_lengths:
        for canvases in spec.canvases:
            yield length, canvases


def measure(
    spec: BenchSpec, model: Model, twin: Any, length: int, canvases: int, progress: Progress
) -> list[dict]:
    """A row per sampler: a warm-up run each (2 passes, a short AR decode), then the repeats, each
    interleaving every sampler's diffusion run, forward alone and AR run (so a speed ratio between the
    exact and a fast sampler holds on a machine whose speed drifts)."""
    prompt = prompt_ids(model, length, spec.seed)
    label = f"prompt {length}, {canvases} canvas{'es' if canvases > 1 else ''}"
    samplers = spec.samplers()
    for _, knobs in samplers:
        diffusion_run(model, prompt, generation_config(spec, model, canvases, 2, knobs), spec.seed)
    if twin is not None:
        ar_run(twin, prompt, 2)
    progress(f"{label}: warm-up")
    configs = [generation_config(spec, model, canvases, knobs=knobs) for _, knobs in samplers]
    samples: list[list[Sample]] = [[] for _ in samplers]
    for r in range(spec.repeats):
        for runs, config in zip(samples, configs, strict=True):
            runs.append(one_sample(spec, model, twin, prompt, config))
        progress(f"{label}: repeat {r + 1}/{spec.repeats}")
    return [
        {"sampler": name, "prompt_tokens": length, "canvases": canvases, **summarize(runs, spec.best, length)}
        for (name, _), runs in zip(samplers, samples, strict=True)
    ]


@contextlib.contextmanager
def device_errors(precision: Precision) -> Iterator[None]:
    """An op MLX cannot run here (on the CPU, `gather_mm` takes only float32, so bfloat16 MoE layers
    fail) is one line naming the precision and the device, not a traceback."""
    try:
        yield
    except RuntimeError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DGemmaError(f"{precision.name} does not run on {device_name()}: MLX says {reason!r}") from None


def run_bench(spec: BenchSpec, progress: Progress | None = None) -> BenchReport:
    """Measure every configuration of `spec`; `progress` is called after each step (`spec.steps()`).

    Precisions run one after the other, each model (and its AR twin, which shares its arrays) freed
    before the next is built, so peak memory is that of the largest precision alone.
    """
    progress = progress or (lambda _: None)
    report = BenchReport(setup={})
    for precision in spec.precisions:
        with device_errors(precision):
            model = load_model(spec, precision)
            twin = autoregressive_twin(model) if spec.ar else None
            report.setup = report.setup or describe(spec, model)
            progress(f"{precision.name}: built")
            head = {"precision": precision.label(), "dtype": str(model.dtype).removeprefix("mlx.core.")}
            head["weights_gb"] = round(weight_bytes(model) / 1e9, 3)
            for length, canvases in _configurations(spec):
                for measured in measure(spec, model, twin, length, canvases, progress):
                    row = {**head, **measured}
                    report.rows.append({key: row[key] for key in ROW_KEYS})
        del model, twin
        gc.collect()
        mx.clear_cache()
    return report
