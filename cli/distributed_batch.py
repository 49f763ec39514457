"""`dgemma batch` under `mlx.launch`: the same command, its rows dealt to every rank (batch_ranks.py), or
with `--pipeline` every batch run by all ranks together, each its stage of the model (pipeline_batch.py).

Both modes open the job the same way (rank 0 reads IN and the resume state, and is the only writer of
OUT; the ranks compare checkpoint and settings first). Rank 0 speaks (loading, skipped lines, progress
over all ranks, the summary); the other ranks are silent unless something goes wrong, which every rank
reports as one line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from .options import EXIT_USER_ERROR, GenerationFlags, loading, resolve_model, say, stderr
from .pipeline import BACKEND_PREFIXES


def batch_across_ranks(
    ranks: Any,
    batch_args: tuple[str, Path, str, bool, Path | None],
    model: str | None,
    settings: dict[str, Any],
    flags: GenerationFlags,
    force: bool,
    rank_timeout: float,
    pipeline: bool = False,
) -> None:
    """Run one rank's part of a batch job; `settings` holds batch_size, chat_template and system
    (compared across ranks at start-up together with the generation flags and the checkpoint)."""
    from dgemma_mlx import distributed as D
    from dgemma_mlx.batch_ranks import RankedBatch
    from dgemma_mlx.loading import resolve_model_path

    from .view import BatchProgress

    watchdog = D.Watchdog(ranks)
    D.stop_on_sigterm(ranks)
    chosen: list[str] = []

    def model_dir() -> Path:
        chosen.append(resolve_model(model))
        return resolve_model_path(chosen[0])

    compared = {**settings, "overrides": flags.overrides, "seed": flags.seed, "input": batch_args[2:4]}
    if pipeline:
        compared["pipeline"] = True
    try:
        job = RankedBatch.open(ranks, watchdog, model_dir, batch_args, compared)
        with loading(chosen[0], quiet=not ranks.is_root):
            model_obj, tokenizer = _load(chosen[0], ranks, force, pipeline)
        template, system = settings["chat_template"], settings["system"]
        for bad in job.prepare(model_obj, tokenizer, flags.overrides, template, system):
            say(stderr, f"skipped {bad}", style="yellow")
        progress = BatchProgress(stderr, job.remaining) if ranks.is_root else None
        advance = lambda row: progress.advance(row["generated_tokens"]) if progress else None  # noqa: E731
        with progress or contextlib.nullcontext():
            if pipeline:
                from dgemma_mlx.pipeline_batch import run_pipelined

                for row in run_pipelined(job, model_obj, tokenizer, settings["batch_size"], flags.seed):
                    advance(row)
            else:
                job.generate(model_obj, tokenizer, settings["batch_size"], flags.seed, advance, rank_timeout)
    except D.RankLost as e:
        D.exit_now(str(e))
    except RuntimeError as e:  # a pipeline rank died mid-forward: MLX's backend raised
        if not (pipeline and str(e).startswith(BACKEND_PREFIXES)):
            raise
        D.exit_now(f"another rank of the pipeline stopped ({str(e).splitlines()[0]})")
    D.done_with_peers()
    _summary(job, ranks, pipeline)


def _load(name: str, ranks: Any, force: bool, pipeline: bool) -> tuple[Any, Any]:
    """The whole model on this rank, or with `pipeline` only this rank's stage of it."""
    if pipeline:
        from dgemma_mlx.pipeline import load_pipeline

        return load_pipeline(name, ranks, force=force)
    from dgemma_mlx import load

    return load(name, force=force)


def _summary(job: Any, ranks: Any, pipeline: bool) -> None:
    if job.run is None:  # not rank 0
        return
    if pipeline:
        how = f"one model over {ranks.size} ranks"
    elif job.exchange is not None:
        how = f"{ranks.size} ranks; {job.exchange.share():.1%} of the time in exchanges"
    else:
        return
    say(stderr, f"{job.run.summary()} ({how})")
    if job.run.bad:
        raise typer.Exit(EXIT_USER_ERROR)
