"""The server's one model thread: requests become rows, rows share canvas batches, results go back.

MLX is not safe to drive from several threads at once, so every model call happens on one worker
thread; the ASGI side submits `Job`s and receives events through a callback (`Job.sink`, which the
app points at an asyncio queue).

How rows are batched (docs/ARCHITECTURE.md, "The server"):
- Each row keeps its own batch-1 encoder cache, its own noise stream (`RowStream`, seed per choice)
  and its own token budget, so it can join or leave a batch at any canvas boundary.
- Rows whose sampler settings agree (`settings_key`) share a batch; the engine's step functions run
  it (`start_canvas`, `denoise_pass`), the decoder reading the stacked caches through
  `frames.FramedModel` so each row keeps its lone run's positions. A request's tokens are therefore
  the ones it gets when it runs alone with its seed, whatever else is in the batch.
- Waiting rows join a batch when its canvas is committed; rows with other settings run in their own
  batch, one pass per batch in turn. A row whose client left (or whose stop string appeared) leaves
  its batch before the next pass.
- Prompts are encoded a chunk per turn (`prefill_chunk` tokens) between the batches' passes, so a
  long prompt does not stall the rows already running; prompts extending an earlier prompt continue
  its cached encoding (`prefix_cache.PrefixCache`). Encoding in pieces gives the same cache as
  encoding at once, so both are exact.
- A row that stopped denoising is parked with its draft until its canvas commits: no more forwards.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np

from ..cache import PromptCache
from ..engine import Generation, finalize_canvas, start_canvas
from ..engine import denoise_pass as engine_denoise_pass
from ..errors import DGemmaError
from ..generation_config import GenerationConfig
from ..model import Model, TopKProbs
from ..noise import MLXNoise, RowStream
from .frames import FramedModel, stack_caches, take_rows
from .prefix_cache import PrefixCache
from .protocol import DIFFUSION_FIELDS

SETTINGS = (*DIFFUSION_FIELDS, "eos_token_id", "pad_token_id")  # the sampler's settings and the stop ids


def settings_key(config: GenerationConfig) -> tuple:
    """What rows of one batch must share: everything the sampler reads per pass (not the budget)."""
    return tuple(getattr(config, name) for name in SETTINGS)


class QueueFull(Exception):
    """More requests are waiting than the server takes (answered 429)."""


class ShuttingDown(Exception):
    """The server is draining: no new work (answered 503)."""


# -- what a request gets back --------------------------------------------------------------------------
@dataclass(frozen=True)
class Admitted:
    """The prompt is encoded; `cached_tokens` of it came from an earlier request's cache."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Committed:
    """A canvas of choice `choice` became final: its tokens so far (up to and including an EOS)."""

    choice: int
    tokens: list[int]
    final: bool
    reason: str | None  # "eos" or "length" once final
    passes: int
    canvases: int
    batch_rows: int  # the most rows this choice shared a batch with (itself included)


@dataclass(frozen=True)
class PassFrame:
    """One denoising pass of choice `choice` (only for jobs that asked for pass frames)."""

    choice: int
    canvas: int
    pass_index: int
    step: int
    temperature: float
    draft: list[int]
    accepted: list[bool]
    done: bool
    rows: int  # rows in the batch on this pass


@dataclass(frozen=True)
class Failed:
    """The job could not run; `status` is the HTTP status the client should see."""

    message: str
    status: int


Event = Admitted | Committed | PassFrame | Failed


@dataclass
class JobSpec:
    """One request: a prompt per choice (token ids), a seed per choice, the resolved settings."""

    prompts: list[list[int]]
    seeds: list[int]
    config: GenerationConfig
    max_tokens: int | None = None  # OpenAI's hard cap on returned tokens (None: the whole budget)
    want_passes: bool = False


class Job:
    """A submitted request as both sides see it: the spec, the callback, the cancel flags."""

    def __init__(self, spec: JobSpec, sink: Callable[[Event], None]):
        self.spec = spec
        self.sink = sink
        self.cancelled = threading.Event()
        self.stopped_choices: set[int] = set()  # choices the client side ended (a stop string)
        self.submitted = time.monotonic()

    def cancel(self) -> None:
        """The client left: every row of this job leaves its batch before the next pass."""
        self.cancelled.set()

    def stop_choice(self, choice: int) -> None:
        self.stopped_choices.add(choice)

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
            self.cancelled.set()


# -- the worker's own state ----------------------------------------------------------------------------
@dataclass
class Row:
    job: Job
    choice: int
    cache: PromptCache
    stream: RowStream
    max_canvases: int
    committed: list[int] = field(default_factory=list)
    pending: list[int] | None = None  # the last committed canvas, to encode before the next one
    passes: int = 0
    canvases: int = 0
    batch_rows: int = 1

    @property
    def gone(self) -> bool:
        return self.job.cancelled.is_set() or self.choice in self.job.stopped_choices


@dataclass
class Batch:
    key: tuple
    config: GenerationConfig
    rows: list[Row]
    generation: Generation | None = None
    canvas: Any = None  # engine.Canvas while a canvas is being denoised
    noise: MLXNoise | None = None
    step: int = 0
    parked: list[tuple[Row, np.ndarray, int]] = field(default_factory=list)  # done rows, out of the forward
    members: list[Row] = field(default_factory=list)  # the rows the current canvas started with

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.parked)


def _select_rows(obj: Any, keep: list[int], batch: int) -> None:
    """Keep only rows `keep` in every per-row field of an engine state object (Canvas, Generation,
    StopRule): arrays, lists and `TopKProbs` whose first dimension is the batch."""
    index = mx.array(keep, dtype=mx.int32)
    for name, value in list(vars(obj).items()):
        if isinstance(value, TopKProbs):
            setattr(obj, name, TopKProbs(value.values[index], value.ids[index]))
        elif isinstance(value, mx.array) and value.ndim and value.shape[0] == batch:
            setattr(obj, name, value[index])
        elif isinstance(value, np.ndarray) and value.ndim and value.shape[0] == batch:
            setattr(obj, name, value[keep])
        elif isinstance(value, list) and value and all(isinstance(v, mx.array) for v in value):
            setattr(obj, name, [v[index] if v.ndim and v.shape[0] == batch else v for v in value])
        elif isinstance(value, list) and len(value) == batch:
            setattr(obj, name, [value[b] for b in keep])


def _materialise(model: Model) -> None:
    """Evaluate every array the model holds, weights and constants alike (RoPE frequencies and the
    like sit under private names, outside `parameters()`)."""
    arrays = [model.parameters()]
    for module in model.modules():
        values = [*vars(module).values(), *module.values()]
        arrays += [v for v in values if isinstance(v, mx.array)]
    mx.eval(arrays)


class Scheduler:
    """Owns the model thread. `submit` from any thread; events arrive through each job's sink."""

    def __init__(
        self,
        model: Model,
        config: GenerationConfig,
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        prefix_cache: PrefixCache | None = None,
        prefill_chunk: int = 512,
    ):
        self.model = model
        self.framed = FramedModel(model)
        self.config = config
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache()
        self._queue: deque[Job] = deque()
        self._waiting: list[Row] = []
        self._admitting: list[tuple[Job, Iterator[None]]] = []  # prompts being encoded, a chunk a turn
        self.prefill_chunk = prefill_chunk
        self._batches: list[Batch] = []
        self._cond = threading.Condition()
        self._draining = False
        self._deadline: float | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "rows_finished": 0, "rows_cancelled": 0, "failed": 0}

    # -- the caller's side ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the model thread. The weights are evaluated here first: MLX streams are per thread
        (since 0.31.2), so a lazily loaded weight could not be evaluated from the worker."""
        _materialise(self.model)
        self._thread = threading.Thread(target=self._run, name="dgemma-model", daemon=True)
        self._thread.start()

    def submit(self, spec: JobSpec, sink: Callable[[Event], None]) -> Job:
        """Queue a job; raises QueueFull past the queue limit and ShuttingDown while draining."""
        job = Job(spec, sink)
        with self._cond:
            if self._draining:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting")
            self._queue.append(job)
            self.stats["requests"] += 1
            self._cond.notify()
        return job

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            running = sum(b.size for b in self._batches)
            return {
                "rows_running": running,
                "rows_waiting": len(self._waiting),
                "queued": len(self._queue),
                "batches": len(self._batches),
                "draining": self._draining,
                **self.stats,
            }

    def drain(self, timeout: float) -> None:
        """Take no new jobs; jobs still running after `timeout` seconds get a 503 error."""
        with self._cond:
            self._draining = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Drain (if not already), end the worker, and wait for it."""
        with self._cond:
            if not self._draining:
                self._draining = True
                self._deadline = time.monotonic()
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the model thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        from ..api import _wired  # mlx-lm's wired-memory limit on Metal, held while the server runs

        with mx.stream(mx.new_stream(mx.default_device())), _wired(self.model):
            while True:
                jobs = self._wait_for_work()
                if jobs is None:
                    return
                self._admitting += [(job, self._admission(job)) for job in jobs]
                self._advance_admission()
                self._step_all()

    def _wait_for_work(self) -> list[Job] | None:
        """Jobs to admit now (within the row limit); None when the worker should end."""
        with self._cond:
            while True:
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    self._fail_everything("the server is shutting down", 503)
                idle = not (self._queue or self._waiting or self._batches or self._admitting)
                if idle and (self._stop or self._draining):
                    return None
                if not idle:
                    break
                mx.clear_cache()  # idle: hand scratch buffers back, so a long-lived server stays flat
                self._cond.wait(timeout=0.5)
            in_flight = sum(b.size for b in self._batches) + len(self._waiting)
            in_flight += sum(len(job.spec.prompts) for job, _ in self._admitting)
            jobs = []
            while self._queue and in_flight + len(self._queue[0].spec.prompts) <= self.max_batch:
                job = self._queue.popleft()
                in_flight += len(job.spec.prompts)
                jobs.append(job)
            if not jobs and not in_flight and self._queue:  # a job wider than the batch still runs
                jobs.append(self._queue.popleft())
            return jobs

    def _fail_everything(self, message: str, status: int) -> None:
        jobs = {id(r.job): r.job for b in self._batches for r in [*b.rows, *(p[0] for p in b.parked)]}
        jobs |= {id(r.job): r.job for r in self._waiting}
        jobs |= {id(job): job for job, _ in self._admitting}
        jobs |= {id(j): j for j in self._queue}
        for job in jobs.values():
            job.emit(Failed(message, status))
            job.cancel()
        self.stats["failed"] += len(jobs)
        self._queue.clear()
        self._waiting.clear()
        self._admitting.clear()
        self._batches.clear()

    def _advance_admission(self) -> None:
        """Encode one chunk of the oldest prompt being admitted, so a long prompt does not stall the
        running batches for its whole prefill (encoding in pieces gives the same cache)."""
        if not self._admitting:
            return
        job, steps = self._admitting[0]
        try:
            next(steps)
            return
        except StopIteration:
            pass
        except DGemmaError as e:
            job.emit(Failed(str(e), 400))
        except Exception:  # a bug: the client gets one line, the log gets the traceback
            traceback.print_exc()
            job.emit(Failed("internal error while encoding the prompt", 500))
        self._admitting.pop(0)

    def _admission(self, job: Job) -> Iterator[None]:
        """Encode the job's prompts chunk by chunk (continuing a cached prefix), then make its rows
        wait for a batch. Yields after each chunk; a job cancelled meanwhile stops here."""
        spec = job.spec
        V = self.model.vocab_size
        encoded: dict[tuple[int, ...], tuple[PromptCache, int]] = {}
        for ids in spec.prompts:
            key = tuple(int(t) for t in ids)
            if key in encoded:
                continue
            if not key:
                raise DGemmaError("empty prompt: give at least one token")
            if bad := [t for t in key if not 0 <= t < V]:
                raise DGemmaError(f"prompt token id {bad[0]} is outside the vocabulary (0..{V - 1})")
            cache, reused = self.prefix_cache.lookup(key)
            if cache is None:
                cache, reused = self.model.make_cache(1), 0
            for start in range(reused, len(key), self.prefill_chunk):
                if job.cancelled.is_set():
                    return
                chunk = key[start : start + self.prefill_chunk]
                self.model.encode(mx.array([chunk], dtype=mx.int32), cache)
                mx.eval(cache.state())
                yield
            self.prefix_cache.store(key, cache)
            encoded[key] = (cache, reused)
        L = self.model.canvas_length
        budget = (
            spec.config.max_new_tokens
            if spec.max_tokens is None
            else min(spec.config.max_new_tokens, spec.max_tokens)
        )
        canvases = max(1, math.ceil(budget / L))
        cached = max(c for _, c in encoded.values())
        job.emit(Admitted(prompt_tokens=sum(len(p) for p in spec.prompts), cached_tokens=cached))
        for choice, (ids, seed) in enumerate(zip(spec.prompts, spec.seeds, strict=True)):
            cache = encoded[tuple(int(t) for t in ids)][0].copy()
            self._waiting.append(Row(job, choice, cache, RowStream(seed), canvases))

    def _step_all(self) -> None:
        """Place waiting rows, then one pass of every batch in turn."""
        self._place_waiting()
        for batch in list(self._batches):
            try:
                self._step(batch)
            except Exception as e:  # one batch failing (a bug, non-finite logits) fails its jobs only
                if not isinstance(e, DGemmaError):
                    traceback.print_exc()
                message = str(e) if isinstance(e, DGemmaError) else "internal error during generation"
                for job in {id(r.job): r.job for r in batch.rows}.values():
                    job.emit(Failed(message, 500))
                    job.cancel()
                if batch in self._batches:
                    self._batches.remove(batch)

    def _place_waiting(self) -> None:
        """Rows join a batch with their settings that sits at a canvas boundary, else a new batch."""
        still_waiting = []
        for row in self._waiting:
            if row.gone:
                self.stats["rows_cancelled"] += 1
                continue
            key = settings_key(row.job.spec.config)
            same = [b for b in self._batches if b.key == key]
            open_ = [b for b in same if b.canvas is None and b.size < self.max_batch]
            if open_:
                open_[0].rows.append(row)
            elif any(b.size < self.max_batch for b in same):
                still_waiting.append(row)  # joins that batch when its canvas is committed
            else:
                self._batches.append(Batch(key, row.job.spec.config, [row]))
        self._waiting = still_waiting

    def _step(self, batch: Batch) -> None:
        self._drop_gone(batch)
        if not batch.rows and batch.parked:  # everyone left stopped or left: the canvas is over
            self._commit(batch)
            return
        if not batch.rows:
            self._batches.remove(batch)
            return
        if batch.canvas is None:
            self._begin_canvas(batch)
        canvas, generation = batch.canvas, batch.generation
        event = engine_denoise_pass(self.framed, generation, canvas, batch.step, batch.noise)
        batch.step -= 1
        for b, row in enumerate(batch.rows):
            if row.job.spec.want_passes:
                row.job.emit(
                    PassFrame(
                        row.choice,
                        row.canvases,
                        event.pass_index,
                        event.step,
                        event.temperature,
                        event.draft[b].tolist(),
                        event.accepted[b].tolist(),
                        bool(event.done[b]),
                        len(batch.rows),
                    )
                )
        if canvas.done_np.all() or batch.step == 0:
            self._commit(batch)
        elif canvas.done_np.any():
            self._park_done(batch)

    def _park_done(self, batch: Batch) -> None:
        """Rows that stopped on this canvas keep their draft and leave the forward until it commits.

        The engine would keep decoding them and then discard the result (a stopped row's draft is
        frozen and it draws no noise), so parking changes no token, only the work.
        """
        done = batch.canvas.done_np
        draft = np.array(batch.canvas.draft)
        for b in np.flatnonzero(done):
            batch.parked.append((batch.rows[b], draft[b].copy(), int(batch.generation.passes[b])))
        self._keep_rows(batch, [b for b in range(len(batch.rows)) if not done[b]])

    def _drop_gone(self, batch: Batch) -> None:
        """Rows whose client left (or stopped them) leave now, mid-canvas included."""
        parked = [p for p in batch.parked if not p[0].gone]
        self.stats["rows_cancelled"] += len(batch.parked) - len(parked)
        batch.parked = parked
        keep = [b for b, row in enumerate(batch.rows) if not row.gone]
        if len(keep) == len(batch.rows):
            return
        self.stats["rows_cancelled"] += len(batch.rows) - len(keep)
        self._keep_rows(batch, keep)

    def _keep_rows(self, batch: Batch, keep: list[int]) -> None:
        """Only rows `keep` stay in the batch's forward; the canvas state is sliced to match."""
        B = len(batch.rows)
        batch.rows = [batch.rows[b] for b in keep]
        if batch.canvas is None or not keep:
            return
        for state in (batch.canvas, batch.generation, getattr(batch.canvas, "stop_rule", None)):
            if state is not None:
                _select_rows(state, keep, B)
        batch.generation.cache = take_rows(batch.generation.cache, keep)
        batch.noise = MLXNoise.from_streams([r.stream for r in batch.rows])

    def _begin_canvas(self, batch: Batch) -> None:
        """Encode each row's last committed canvas (batch-1, as alone), stack the caches, draw noise."""
        for row in batch.rows:
            if row.pending is not None:
                self.model.encode(mx.array([row.pending], dtype=mx.int32), row.cache)
                row.pending = None
            row.batch_rows = max(row.batch_rows, len(batch.rows))
        batch.members = list(batch.rows)
        framed = stack_caches([r.cache for r in batch.rows])
        B = len(batch.rows)
        generation = Generation(
            config=batch.config,
            cache=framed,  # type: ignore[arg-type]  # FramedModel.decode reads it
            sequences=np.zeros((B, 0), dtype=np.int64),
            prompt_lengths=[r.cache.offset for r in batch.rows],
            prompt_width=0,
            canvases=1,
            pins=None,
            start=time.perf_counter(),
            prompt_time=0.0,
        )
        batch.noise = MLXNoise.from_streams([r.stream for r in batch.rows])
        batch.generation = generation
        batch.canvas = start_canvas(self.framed, generation, 0, batch.noise)
        batch.step = batch.config.max_denoising_steps

    def _commit(self, batch: Batch) -> None:
        """Each row takes its draft (EOS and padding as the engine's commit); finished rows leave."""
        config = batch.config
        finals = batch.parked
        if batch.rows:
            draft = np.array(batch.canvas.draft)
            finals += [(row, draft[b], int(batch.generation.passes[b])) for b, row in enumerate(batch.rows)]
        batch.parked = []
        kept = []
        order = {id(row): i for i, row in enumerate(batch.members)}  # the canvas's own row order
        for row, row_draft, passes in sorted(finals, key=lambda f: order[id(f[0])]):
            row.passes += passes
            tokens, finished = finalize_canvas(row_draft[None], np.zeros(1, dtype=bool), config, False)
            new = tokens[0].tolist()
            reason = self._take_canvas(row, new, bool(finished[0]), set(config.eos_token_id or ()))
            cap = row.job.spec.max_tokens
            shown = row.committed if cap is None else row.committed[:cap]
            event = Committed(
                row.choice, list(shown), reason is not None, reason, row.passes, row.canvases, row.batch_rows
            )
            row.job.emit(event)
            if reason is None:
                row.pending = new
                kept.append(row)
            else:
                self.stats["rows_finished"] += 1
        batch.rows = kept
        batch.canvas = batch.generation = batch.noise = None
        if not kept:
            self._batches.remove(batch)
            mx.clear_cache()  # its scratch buffers go back, as the engine's `finish` does per generation

    @staticmethod
    def _take_canvas(row: Row, new: list[int], eos_seen: bool, eos: set[int]) -> str | None:
        """Append a committed canvas to the row; its finish reason, or None if it goes on.

        OpenAI's `max_tokens` is a hard cap on returned tokens: the budget runs whole canvases (as the
        engine does), and what goes past the cap is cut, finish reason "length".
        """
        cut = next((i + 1 for i, t in enumerate(new) if t in eos), None)
        row.committed += new[:cut] if cut else new
        row.canvases += 1
        cap = row.job.spec.max_tokens
        if cap is not None and (len(row.committed) > cap or (len(row.committed) == cap and not eos_seen)):
            return "length"
        if eos_seen:
            return "eos"
        return "length" if row.canvases >= row.max_canvases else None
