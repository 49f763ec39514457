"""`dgemma bench --pipeline` under `mlx.launch`: what splitting the model over ranks costs a pass.

Per prompt length, on the same weights and shapes (one canvas, a cache holding the prompt, the
previous pass's self-conditioning, as the engine runs a pass):

- `alone_ms`: the whole model's forward in one process (rank 0, while the others wait).
- `pass_ms`: the pipelined forward (every rank its stage, activations sent on, the last stage's
  hidden states gathered to every rank, the head on every rank).
- `stage_ms`: each rank's own part run alone, one rank at a time with the others waiting, without
  any communication (rank 0's includes the canvas embedding and self-conditioning); `head_ms` the
  final norm and tied head. `compute_ms` = their sum: the pass's critical path without the wire.
- `comm_ms` = `pass_ms` - `compute_ms` and `comm_pct`: the part of a pipelined pass spent sending,
  receiving and waiting for the other ranks, and `bytes_per_pass`: what all ranks sent per pass.
- `wire_ms` (`wire_pct` of `pass_ms`): a pass's messages alone, the same hops with no compute: the
  communication cost measured directly, not as a difference of two noisy figures.

Each repeat times all of these in turn (medians reported), so they share the machine's state: on a
shared or throttling machine a figure taken minutes apart would not compare.

Pipeline mode is for memory: with one canvas in flight the stages run one after the other, so a
pass is never faster than `alone_ms`; what it adds is `comm_ms`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from .bench import BenchSpec, device_name, load_model, prompt_ids, self_conditioning_input
from .distributed import Ranks
from .engine import encode
from .pipeline import PipelineModel
from .pipeline_plan import layer_split


def _barrier(ranks: Ranks) -> None:
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=ranks.group, stream=mx.cpu))


def _share(ranks: Ranks, value: float) -> float:
    """The sum of `value` over the ranks (each rank measured its own part, the others gave 0)."""
    return mx.distributed.all_sum(mx.array(value, dtype=mx.float32), group=ranks.group, stream=mx.cpu).item()


def _once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    mx.eval(fn())
    return time.perf_counter() - start


def _row(ranks: Ranks, model: Any, stage: PipelineModel, prompt: list[int], canvas: mx.array, repeats: int):
    """One prompt length's figures. Each repeat times, in turn and with the other ranks waiting, the
    whole model on rank 0, each rank's part, the head, then the pipelined pass (every rank): so the
    figures compared share the machine's state, and their medians are reported."""
    full_cache, cache = model.make_cache(1), stage.make_cache(1)
    if ranks.is_root:
        encode(model, mx.array([prompt]), full_cache)
    encode(stage, mx.array([prompt]), cache)
    probs = self_conditioning_input(stage, stage.decode(canvas, cache))
    mx.eval(probs)
    hidden = mx.random.normal((1, canvas.shape[1], stage.text.hidden_size)).astype(stage.dtype)

    def own_part() -> mx.array:
        x = stage.decoder_input(canvas, probs) if stage.is_first else hidden
        return stage.decoder_layers(x, cache)

    def wire() -> mx.array:  # a pass's messages alone: the stage hop in, then on to the final states
        x = hidden if stage.is_first else stage._receive(hidden.shape)
        return stage._final_states(x)

    parts: dict[str, Callable[[], Any]] = {
        "alone": lambda: model.decode(canvas, full_cache, self_conditioning_probs=probs),
        "head": lambda: stage.head(hidden),
    }
    names = ("alone", "head", "pass", "wire", *map(str, range(ranks.size)))
    runs: dict[str, list[float]] = {k: [] for k in names}
    sent = 0.0
    for repeat in range(repeats + 1):  # the first round warms up
        times = {}
        for name in ("alone", "head"):
            _barrier(ranks)
            times[name] = _share(ranks, _once(parts[name]) if ranks.is_root else 0.0)
        for r in range(ranks.size):
            _barrier(ranks)
            times[str(r)] = _share(ranks, _once(own_part) if r == ranks.rank else 0.0)
        _barrier(ranks)
        times["wire"] = _once(wire)
        _barrier(ranks)
        before = stage.bytes_sent
        times["pass"] = _once(lambda: stage.decode(canvas, cache, self_conditioning_probs=probs))
        sent = _share(ranks, stage.bytes_sent - before)
        if repeat:
            for k, v in times.items():
                runs[k].append(v)
    ms = {k: 1e3 * statistics.median(v) for k, v in runs.items()}
    stages = [ms[str(r)] for r in range(ranks.size)]
    compute = sum(stages) + ms["head"]
    return {
        "alone_ms": ms["alone"],
        "pass_ms": ms["pass"],
        "stage_ms": stages,
        "head_ms": ms["head"],
        "compute_ms": compute,
        "comm_ms": ms["pass"] - compute,
        "comm_pct": 100 * (ms["pass"] - compute) / ms["pass"],
        "wire_ms": ms["wire"],
        "wire_pct": 100 * ms["wire"] / ms["pass"],
        "bytes_per_pass": int(sent),
    }


def _rounded(value: Any) -> Any:
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 3) if isinstance(value, float) else value


def run_pipeline_bench(spec: BenchSpec, ranks: Ranks) -> dict[str, Any]:
    """Every rank builds the same model (random weights are seeded alike; a checkpoint is loaded
    whole), rank 0 times it whole and every rank its stage; the report is the same on every rank.
    (Only timing is measured here: `dgemma info --pipeline N` gives each rank's memory.)"""
    precision = spec.precisions[0]
    model = load_model(spec, precision)
    L, V = model.canvas_length, model.vocab_size
    canvas = mx.random.randint(0, V, (1, L), key=mx.random.key(spec.seed))
    split = layer_split(model.text.num_hidden_layers, ranks.size)
    # The stage runs only its layers of the same arrays; the whole model stays for rank 0's timing.
    stage = PipelineModel(model, ranks.group, split[ranks.rank])
    rows = []
    for n in spec.prompt_lengths:
        prompt = prompt_ids(model, n, spec.seed)
        row = {"prompt_tokens": n, **_row(ranks, model, stage, prompt, canvas, spec.repeats)}
        rows.append({k: _rounded(v) for k, v in row.items()})
    setup = {
        "geometry": spec.model or spec.geometry,
        "precision": precision.name,
        "layers": model.text.num_hidden_layers,
        "ranks": ranks.size,
        "layers_per_rank": [len(r) for r in split],
        "hidden_size": model.text.hidden_size,
        "canvas_length": L,
        "device": device_name(),
        "repeats": spec.repeats,
    }
    return {"setup": setup, "rows": rows}
