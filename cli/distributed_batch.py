"""`dgemma batch` under `mlx.launch`: the same command, its rows dealt to every rank (batch_ranks.py).

Rank 0 speaks (loading, skipped lines, progress over all ranks, the summary) and owns the files; the
other ranks are silent unless something goes wrong, which every rank reports as one line.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer

from .options import EXIT_USER_ERROR, GenerationFlags, loading, resolve_model, say, stderr


def batch_across_ranks(
    ranks: Any,
    batch_args: tuple[str, Path, str, bool, Path | None],
    model: str | None,
    settings: dict[str, Any],
    flags: GenerationFlags,
    force: bool,
    rank_timeout: float,
) -> None:
    """Run one rank's part of a data-parallel batch; `settings` holds batch_size, chat_template and
    system (compared across ranks at start-up together with the generation flags and the checkpoint)."""
    from dgemma_mlx import distributed as D
    from dgemma_mlx.batch_ranks import RankedBatch

    from .view import BatchProgress

    watchdog = D.Watchdog(ranks)
    D.stop_on_sigterm(ranks)
    chosen: list[str] = []

    def model_dir() -> Path:
        from dgemma_mlx.loading import resolve_model_path

        chosen.append(resolve_model(model))
        return resolve_model_path(chosen[0])

    compared = {**settings, "overrides": flags.overrides, "seed": flags.seed, "input": batch_args[2:4]}
    try:
        job = RankedBatch.open(ranks, watchdog, model_dir, batch_args, compared)
        with loading(chosen[0], quiet=not ranks.is_root):
            from dgemma_mlx import load

            model_obj, tokenizer = load(chosen[0], force=force)
        template, system = settings["chat_template"], settings["system"]
        for bad in job.prepare(model_obj, tokenizer, flags.overrides, template, system):
            say(stderr, f"skipped {bad}", style="yellow")
        progress = BatchProgress(stderr, job.remaining) if ranks.is_root else None
        with progress or contextlib.nullcontext():
            job.generate(
                model_obj, tokenizer, settings["batch_size"], flags.seed,
                lambda row: progress.advance(row["generated_tokens"]) if progress else None,
                rank_timeout,
            )  # fmt: skip
    except D.RankLost as e:
        D.exit_now(str(e))
    D.done_with_peers()
    if job.run is not None and job.exchange is not None:
        share = job.exchange.share()
        say(stderr, f"{job.run.summary()} ({ranks.size} ranks; {share:.1%} of the time in exchanges)")
        if job.run.bad:
            raise typer.Exit(EXIT_USER_ERROR)
