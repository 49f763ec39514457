"""Data-parallel `dgemma batch`: every rank holds the whole model and answers its share of the batches.

Started by `mlx.launch ... -- dgemma batch IN -o OUT`. Rows must come out exactly as one process
writes them, so the work is dealt in whole planned batches, never single rows: every rank plans the
same batches over every runnable request (`batch.plan_batches`, finished rows included, as a single
process and its resume do) and seeds batch k with `seed` plus its plan position, so a batch's tokens
do not depend on which rank runs it (a batch's shape, its left padding, touches the arithmetic; see
batch.py). The batches that still have rows to write are dealt round-robin in plan order.

Files live on rank 0's machine only. Rank 0 reads IN and, on `--resume`, which ids OUT already
holds, and sends both to the others (`distributed.from_root`), so the other Macs need the model but
not the job's files. Rank 0 is the only writer of OUT: one process appending whole fsynced lines
keeps batch.py's guarantees (a killed run leaves only whole rows; `--resume` reruns exactly the
missing ones, and its prompt checks apply unchanged). Several writers would need a shared disk the
Macs do not have, and per-rank shard files merged at the end would leave OUT incomplete until the
merge and a second resume format.

Rows reach rank 0 in *ticks*: about once a second, at the end of a denoising pass, every rank joins
one `all_gather` carrying the rows it finished since the last tick and whether it has work left.
The tick is also the heartbeat: it waits at most one pass for a busy peer, so a peer that misses a
tick by `timeout` seconds is lost (`distributed.Watchdog`), and one that died closes its connection
and fails the tick at once. A rank with no batches left keeps ticking until every rank is done.
Rows from other ranks reach OUT within about a tick of finishing; those in flight when a rank dies
are lost, and `--resume` writes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .batch import (
    BadLine,
    BatchRun,
    Job,
    Request,
    ResultWriter,
    generate_batch,
    id_key,
    plan_batches,
    prepare,
)
from .distributed import (
    DEFAULT_TIMEOUT,
    STARTUP_TIMEOUT,
    Ranks,
    Watchdog,
    all_gather_bytes,
    checkpoint_fingerprint,
    collective,
    from_root,
    handshake,
)
from .errors import DGemmaError

TICK_SECONDS = 1.0  # how often ranks exchange rows and heartbeats (at the next pass end)


def deal(batches: list[list[Job]], done: set[str], ranks: Ranks) -> list[tuple[int, list[Job]]]:
    """This rank's batches as (plan position of the first row, batch): those with rows left, dealt
    round-robin in plan order. The position is the batch's seed offset, whoever runs it."""
    left, first = [], 0
    for batch in batches:
        if not all(job.request.key in done for job in batch):
            left.append((first, batch))
        first += len(batch)
    return left[ranks.rank :: ranks.size]


@dataclass
class Exchange:
    """The ticks: rows travel to rank 0, every rank shows it is alive, and all learn when all are done.

    On rank 0 `deliver` writes a row (its own at once, the others' when their tick arrives); on the
    other ranks rows wait in `outbox` for the next tick.
    """

    ranks: Ranks
    watchdog: Watchdog | None
    deliver: Callable[[dict[str, Any]], None]
    timeout: float = DEFAULT_TIMEOUT
    interval: float = TICK_SECONDS
    outbox: list[dict[str, Any]] = field(default_factory=list)
    ticks: int = 0
    seconds: float = 0.0  # time spent inside ticks (waiting for peers included)
    next_tick: float = 0.0
    started: float = 0.0

    def share(self) -> float:
        """The part of this rank's time since the start line spent in ticks (exchange and waiting)."""
        elapsed = time.monotonic() - self.started
        return self.seconds / elapsed if self.started and elapsed > 0 else 0.0

    def add(self, row: dict[str, Any]) -> None:
        if self.ranks.is_root:
            self.deliver(row)
        else:
            self.outbox.append(row)

    def tick(self, finished: bool) -> bool:
        """One exchange; True when every rank has finished (the same answer on every rank)."""
        # The first tick waits for every rank's model load.
        timeout = STARTUP_TIMEOUT if self.ticks == 0 else self.timeout
        mine = json.dumps({"finished": finished, "rows": self.outbox}).encode()
        start = time.monotonic()
        got = collective(
            self.ranks, self.watchdog, f"tick {self.ticks}", timeout,
            lambda: all_gather_bytes(self.ranks, mine),
        )  # fmt: skip
        self.outbox = []
        now = time.monotonic()
        self.next_tick = now + self.interval
        if self.ticks == 0:  # the start line, after every rank's model load: the clock starts here
            self.started = now
        else:
            self.seconds += now - start
        self.ticks += 1
        states = [json.loads(g) for g in got]
        if self.ranks.is_root:
            for state in states[1:]:
                for row in state["rows"]:
                    self.deliver(row)
        return all(state["finished"] for state in states)

    def on_pass(self) -> None:
        if time.monotonic() >= self.next_tick:
            self.tick(False)

    def finish(self) -> None:
        """Keep ticking (sending what is left) until every rank has finished."""
        while not self.tick(True):
            time.sleep(max(0.0, self.next_tick - time.monotonic()))


def job_settings(settings: Mapping[str, Any]) -> str:
    """The settings every rank must agree on, as canonical JSON for the handshake."""
    return json.dumps(settings, sort_keys=True, default=str)


@dataclass
class RankedBatch:
    """One rank's part of a data-parallel batch job. `run` (rank 0) is the single-process `BatchRun`
    that owns the files; the others hold only the requests and the ids already written."""

    ranks: Ranks
    watchdog: Watchdog
    requests: list[Request]
    done: set[str]
    run: BatchRun | None = None
    jobs: list[Job] = field(default_factory=list)  # every runnable job: the plan
    remaining: int = 0  # rows still to write, all ranks together
    exchange: Exchange | None = None

    @classmethod
    def open(
        cls,
        ranks: Ranks,
        watchdog: Watchdog,
        model_dir: Callable[[], str | Path],
        batch_args: tuple[str, Path, str, bool, Path | None],
        settings: Mapping[str, Any],
    ) -> RankedBatch:
        """Check the files (rank 0), compare the checkpoint and settings across ranks, share the input.

        `model_dir` resolves --model on this rank; `batch_args` are `BatchRun`'s (input, output,
        format, resume, errors). A failure on any rank stops every rank with one line each.
        """
        error, fingerprint, run = None, b"", None
        try:
            fingerprint = checkpoint_fingerprint(model_dir())
            if ranks.is_root:
                run = BatchRun(*batch_args)
        except DGemmaError as e:
            error = e
        parts = {"model files": fingerprint, "settings": job_settings(settings)}
        handshake(ranks, parts, error, watchdog)
        payload = None
        if run is not None:
            state = {"requests": [asdict(r) for r in run.requests], "done": sorted(run.done)}
            payload = json.dumps(state).encode()
        shared = collective(
            ranks, watchdog, "sharing the input", STARTUP_TIMEOUT, lambda: from_root(ranks, payload)
        )
        state = json.loads(shared)
        requests = [Request(**r) for r in state["requests"]]
        return cls(ranks, watchdog, requests, set(state["done"]), run)

    def prepare(
        self, model: Any, tokenizer: Any, overrides: dict[str, Any], chat_template: bool, system: str | None
    ) -> list[BadLine]:
        """Render every prompt on every rank (same tokenizer, same plan); rank 0 also writes the errors
        file and returns the lines that cannot run."""
        if self.run is not None:
            bad = self.run.prepare(model, tokenizer, overrides, chat_template, system)
            self.jobs = self.run.all_jobs
        else:
            bad, self.jobs = [], prepare(model, tokenizer, self.requests, overrides, chat_template, system)[0]
        self.remaining = sum(job.request.key not in self.done for job in self.jobs)
        return bad

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int,
        seed: int | None,
        on_row: Callable[[dict[str, Any]], None],
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Run this rank's batches; `on_row` sees every row written (on rank 0: every rank's)."""
        writer = ResultWriter(self.run.output) if self.run is not None else None

        def deliver(row: dict[str, Any]) -> None:
            if writer is not None:
                writer.write(row)
                assert self.run is not None
                self.run.written = writer.written
                self.run.cut_short += not row["finished"]
            on_row(row)

        self.exchange = exchange = Exchange(self.ranks, self.watchdog, deliver, timeout)
        if writer is not None:
            writer.__enter__()
        try:
            exchange.tick(False)  # everyone loaded: the start line
            for first, batch in deal(plan_batches(self.jobs, batch_size), self.done, self.ranks):
                shas = {job.request.key: job.request.prompt_sha for job in batch}
                batch_seed = None if seed is None else seed + first
                for row in generate_batch(model, tokenizer, batch, batch_seed, exchange.on_pass):
                    key = id_key(row["id"])
                    if key not in self.done:
                        rest = {f: v for f, v in row.items() if f != "id"}
                        exchange.add({"id": row["id"], "prompt_sha": shas[key], **rest})
            exchange.finish()
        finally:
            if writer is not None:
                writer.__exit__(None, None, None)
