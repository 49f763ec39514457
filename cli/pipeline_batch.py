"""`dgemma batch --pipeline` under `mlx.launch`: the model split over the ranks (pipeline_batch.py).

Rank 0 speaks (loading, skipped lines, progress, the summary) and owns the files; the other ranks
run their stage of every forward silently.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from .options import EXIT_USER_ERROR, GenerationFlags, loading, resolve_model, say, stderr
from .pipeline import BACKEND_PREFIXES


def batch_pipelined(
    batch_args: tuple[str, Path, str, bool, Path | None],
    model: str | None,
    settings: dict[str, Any],
    flags: GenerationFlags,
    force: bool,
) -> None:
    """One rank's part of a pipelined batch job; `settings` as in `distributed_batch`."""
    from dgemma_mlx import distributed as D
    from dgemma_mlx.batch_ranks import RankedBatch
    from dgemma_mlx.loading import resolve_model_path
    from dgemma_mlx.pipeline import load_pipeline, pipeline_ranks
    from dgemma_mlx.pipeline_batch import run_pipelined

    from .view import BatchProgress

    ranks = pipeline_ranks()
    watchdog = D.Watchdog(ranks)
    D.stop_on_sigterm(ranks)
    chosen: list[str] = []

    def model_dir() -> Path:
        chosen.append(resolve_model(model))
        return resolve_model_path(chosen[0])

    compared = {**settings, "overrides": flags.overrides, "seed": flags.seed, "input": batch_args[2:4]}
    compared["pipeline"] = True
    try:
        job = RankedBatch.open(ranks, watchdog, model_dir, batch_args, compared)
        with loading(chosen[0], quiet=not ranks.is_root):
            model_obj, tokenizer = load_pipeline(chosen[0], ranks, force=force)
        template, system = settings["chat_template"], settings["system"]
        for bad in job.prepare(model_obj, tokenizer, flags.overrides, template, system):
            say(stderr, f"skipped {bad}", style="yellow")
        progress = BatchProgress(stderr, job.remaining) if ranks.is_root else None
        with progress or contextlib.nullcontext():
            for row in run_pipelined(job, model_obj, tokenizer, settings["batch_size"], flags.seed):
                if progress is not None:
                    progress.advance(row["generated_tokens"])
    except D.RankLost as e:
        D.exit_now(str(e))
    except RuntimeError as e:  # a rank died mid-forward: MLX's backend raised
        if not str(e).startswith(BACKEND_PREFIXES):
            raise
        D.exit_now(f"another rank of the pipeline stopped ({str(e).splitlines()[0]})")
    D.done_with_peers()
    if job.run is not None:
        say(stderr, f"{job.run.summary()} (one model over {ranks.size} ranks)")
        if job.run.bad:
            raise typer.Exit(EXIT_USER_ERROR)
