"""`dgemma batch --pipeline`: one pipelined model over all ranks answers every batch; rank 0 writes.

The files are handled as in data-parallel batch (batch_ranks.py's `RankedBatch.open`): rank 0 reads
IN and, on `--resume`, which ids OUT holds, and shares both, so the other Macs need only the model.
Here the ranks are stages of one model, so every rank runs every batch, in plan order and with the
plan's seeds (`batch.run_batches`): rank 0 has each row the moment its canvas commits and is the only
writer of OUT, exactly as one process writes it (same rows, same resume); the others write nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .batch import ResultWriter, run_batches
from .batch_ranks import RankedBatch


class _NoWriter:
    """A follower's writer: its rows are rank 0's, which writes them."""

    written = 0

    def write(self, row: dict[str, Any]) -> None:
        self.written += 1


def run_pipelined(
    job: RankedBatch, model: Any, tokenizer: Any, batch_size: int, seed: int | None
) -> Iterator[dict[str, Any]]:
    """Every batch on every rank (each its stage); yields the rows (on rank 0: as written to OUT)."""
    run = job.run
    if run is None:
        yield from run_batches(model, tokenizer, job.jobs, _NoWriter(), batch_size, seed, job.done)  # type: ignore[arg-type]
        return
    with ResultWriter(run.output) as writer:
        for row in run_batches(model, tokenizer, job.jobs, writer, batch_size, seed, job.done):
            run.written = writer.written
            run.cut_short += not row["finished"]
            yield row
