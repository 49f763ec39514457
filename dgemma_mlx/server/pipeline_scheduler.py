"""`dgemma serve --pipeline`: rank 0 owns HTTP and the scheduler's decisions, the other ranks follow
(as mlx-lm's server does under `mlx.launch`), each running its stage of every forward (pipeline.py).

Every rank runs the same scheduler loop on the same model, so each rank's passes, batches, caches and
seeds stay identical as long as every rank sees the same inputs at the same loop step. The inputs
that come from outside the model thread are the new jobs, a client leaving (cancel), a stop string
ending a choice, and the shutdown deadline. Rank 0 gathers them once per loop step and sends them to
the others (`distributed.from_root`), and then every rank, rank 0 included, applies them at that
step: a job's `cancelled` flag and stopped choices change only there (`SyncedFlag`, `PipelineJob`),
never in mid-step, where rank 0 alone would see them. Followers' jobs have no client: their events
go nowhere.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import mlx.core as mx

from ..distributed import Ranks, from_root
from ..generation_config import GenerationConfig
from .scheduler import Job, JobSpec, QueueFull, Scheduler, ShuttingDown


class SyncedFlag:
    """`Job.cancelled` under a pipeline: `set()` from any thread is a request; the model thread sees
    it (`is_set`) once it was applied at a loop step on every rank."""

    def __init__(self, seen: bool = False):
        self._requested = threading.Event()
        self._seen = seen

    def set(self) -> None:
        self._requested.set()

    def requested(self) -> bool:
        return self._requested.is_set() and not self._seen

    def is_set(self) -> bool:
        return self._seen

    def apply(self) -> None:
        self._seen = True


class PipelineJob(Job):
    """A job whose cancel and stopped choices take effect at the next shared loop step."""

    def __init__(self, spec: JobSpec, sink: Any, number: int):
        super().__init__(spec, sink)
        self.number = number
        self.cancelled = SyncedFlag()  # type: ignore[assignment]
        self._stop_requests: set[int] = set()
        self._lock = threading.Lock()

    def stop_choice(self, choice: int) -> None:
        with self._lock:
            self._stop_requests.add(choice)

    def pending_stops(self) -> list[int]:
        with self._lock:
            return sorted(self._stop_requests - self.stopped_choices)


def spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    return {
        "prompts": spec.prompts,
        "seeds": spec.seeds,
        "config": spec.config.to_dict(),
        "max_tokens": spec.max_tokens,
        "want_passes": spec.want_passes,
    }


def spec_from_dict(raw: dict[str, Any]) -> JobSpec:
    return JobSpec(
        prompts=raw["prompts"],
        seeds=raw["seeds"],
        config=GenerationConfig.from_dict(raw["config"]),
        max_tokens=raw["max_tokens"],
        want_passes=raw["want_passes"],
    )


def job_entry(job: PipelineJob) -> dict[str, Any]:
    """A job as rank 0 hands it to the followers when it leaves the queue, with the cancel and stops
    already applied to it while it waited (the followers never saw it queued)."""
    return {
        "number": job.number,
        "spec": spec_to_dict(job.spec),
        "cancelled": job.cancelled.is_set(),
        "stopped": sorted(job.stopped_choices),
    }


class PipelineScheduler(Scheduler):
    """The scheduler on every rank of a pipelined server: rank 0 decides each loop step's inputs."""

    def __init__(self, model: Any, config: GenerationConfig, ranks: Ranks, **kwargs: Any):
        super().__init__(model, config, **kwargs)
        self.ranks = ranks
        self._jobs: dict[int, PipelineJob] = {}  # live jobs by number (rank 0: from submit on)
        self._numbers = itertools.count()

    # -- rank 0: the caller's side ---------------------------------------------------------------------
    def submit(self, spec: JobSpec, sink: Any) -> Job:
        with self._cond:
            if self._draining:
                raise ShuttingDown("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are already waiting")
            job = PipelineJob(spec, sink, next(self._numbers))
            self._jobs[job.number] = job
            self._queue.append(job)
            self.stats["requests"] += 1
            self._cond.notify()
        return job

    def run_follower(self) -> None:
        """A follower's whole life: the model loop in this thread until rank 0 ends it."""
        self.start()
        assert self._thread is not None
        self._thread.join()

    # -- every rank: one shared step -------------------------------------------------------------------
    def _wait_for_work(self) -> list[Job] | None:  # type: ignore[override]
        step = self._decide() if self.ranks.is_root else None
        payload = from_root(self.ranks, None if step is None else json.dumps(step).encode())
        return self._apply(json.loads(payload))

    def _decide(self) -> dict[str, Any]:
        """Rank 0: wait for something to do, then this step's inputs as plain data."""
        with self._cond:
            while True:
                fail = self._deadline is not None and time.monotonic() >= self._deadline
                idle = not (self._queue or self._waiting or self._batches or self._admitting)
                if fail or not idle or self._stop or self._draining:
                    break
                mx.clear_cache()  # idle: hand scratch buffers back, so a long-lived server stays flat
                self._cond.wait(timeout=0.5)
            # after a failed deadline everything is gone: a draining server then ends
            end = (idle or fail) and (self._stop or self._draining)
            step: dict[str, Any] = {"fail": fail, "end": end, "jobs": []}
            step["cancel"] = [n for n, job in self._jobs.items() if job.cancelled.requested()]
            step["stop"] = [[n, c] for n, job in self._jobs.items() for c in job.pending_stops()]
            if fail or step["end"]:
                return step
            in_flight = sum(b.size for b in self._batches) + len(self._waiting)
            in_flight += sum(len(job.spec.prompts) for job, _ in self._admitting)
            picked = []
            while self._queue and in_flight + len(self._queue[0].spec.prompts) <= self.max_batch:
                picked.append(self._queue.popleft())
                in_flight += len(picked[-1].spec.prompts)
            if not picked and not in_flight and self._queue:  # a job wider than the batch still runs
                picked.append(self._queue.popleft())
            step["jobs"] = [job_entry(j) for j in picked]  # type: ignore[arg-type]
            return step

    def _apply(self, step: dict[str, Any]) -> list[Job] | None:
        """Every rank: the new jobs, then the step's cancels and stops, the deadline, the end."""
        jobs: list[Job] = []
        for entry in step["jobs"]:
            if self.ranks.is_root:
                jobs.append(self._jobs[entry["number"]])
                continue
            job = PipelineJob(spec_from_dict(entry["spec"]), lambda event: None, entry["number"])
            if entry["cancelled"]:  # what rank 0 applied while the job was queued
                job.cancelled.apply()
            job.stopped_choices.update(entry["stopped"])
            self._jobs[job.number] = job
            jobs.append(job)
        for number in step["cancel"]:
            if number in self._jobs:
                self._jobs[number].cancelled.apply()
        for number, choice in step["stop"]:
            if number in self._jobs:
                self._jobs[number].stopped_choices.add(choice)
        if step["fail"]:
            self._fail_everything("the server is shutting down", 503)
            for job in self._jobs.values():
                job.cancelled.apply()
        self._forget_finished(jobs)
        return None if step["end"] else jobs

    def _forget_finished(self, new: list[Job]) -> None:
        """Drop jobs no queue, admission, waiting row or batch refers to any more."""
        with self._cond:  # submit adds jobs from other threads
            live = {id(j) for j in new} | {id(j) for j in self._queue}
            live |= {id(job) for job, _ in self._admitting} | {id(r.job) for r in self._waiting}
            live |= {id(r.job) for b in self._batches for r in [*b.rows, *(p[0] for p in b.parked)]}
            self._jobs = {n: j for n, j in self._jobs.items() if id(j) in live}
