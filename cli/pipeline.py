"""`--pipeline` for the generating commands: the option, and the model loaded as this rank's stage.

Under `mlx.launch` every rank runs the same command; rank 0 speaks (views, answers, files), the
others run their stage of every forward silently (dgemma_mlx/pipeline.py).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import typer

BACKEND_PREFIXES = ("[ring]", "[jaccl]", "[mpi]", "[nccl]")  # how MLX's backends start their errors
PIPELINE_HELP = (
    "Under mlx.launch: split the model by layers over the processes, each holding ~1/N of the weights "
    "(`dgemma info --pipeline N` shows each share)."
)


@contextlib.contextmanager
def peer_faults(pipeline: bool) -> Iterator[None]:
    """A rank that died mid-forward makes MLX's backend raise (`[ring] connection to a peer was lost`):
    one line and exit status 3 (`distributed.EXIT_RANK_LOST`), as data-parallel batch ends, not a
    traceback."""
    try:
        yield
    except RuntimeError as e:
        if not pipeline or not str(e).startswith(BACKEND_PREFIXES):
            raise
        from dgemma_mlx.distributed import exit_now

        exit_now(f"another rank of the pipeline stopped ({str(e).splitlines()[0]})")


def pipeline_option() -> Any:
    return typer.Option(False, "--pipeline", help=PIPELINE_HELP)


def check_launched(pipeline: bool) -> None:
    """--pipeline outside `mlx.launch` is one line before anything is loaded (read from the environment)."""
    from dgemma_mlx.distributed import launched

    if pipeline and not launched():
        from dgemma_mlx.errors import DGemmaError
        from dgemma_mlx.pipeline_plan import LONE_PROCESS

        raise DGemmaError(LONE_PROCESS)


def check_pipeline_prompt(prompt: str | None) -> None:
    """mlx.launch forwards stdin to every rank but never closes it: a piped prompt would never end."""
    if prompt is None or prompt == "-":
        raise typer.BadParameter(
            "with --pipeline give the prompt as -p TEXT (mlx.launch never closes stdin)",
            param_hint="'-p' / '--prompt'",
        )


def is_follower(pipeline: bool) -> bool:
    """A rank other than 0 of a launched job, known from the environment before MLX is imported (so
    only rank 0 says `loading …`)."""
    from dgemma_mlx.distributed import LAUNCH_ENV

    return pipeline and any(os.environ.get(k, "0") not in ("", "0") for k in LAUNCH_ENV)


def load_stage(chosen: str, force: bool) -> tuple[Any, Any, Any]:
    """(model, tokenizer, ranks): this rank's stage, after every rank agreed on files and options."""
    from dgemma_mlx.pipeline import start_pipeline

    return start_pipeline(chosen, settings="\0".join(sys.argv[1:]), force=force)


def follow_or_lead(state: Any, model: Any, ranks: Any, max_batch: int, max_queue: int, prefix: int) -> bool:
    """`dgemma serve --pipeline`: give the server a scheduler whose steps rank 0 decides for every rank.
    A follower runs its model loop here until rank 0 ends it and returns False (it serves no HTTP);
    rank 0 returns True and goes on to serve."""
    import signal

    from dgemma_mlx.server.pipeline_scheduler import PipelineScheduler
    from dgemma_mlx.server.prefix_cache import PrefixCache

    state.scheduler = PipelineScheduler(
        model, state.config, ranks, max_batch=max_batch, max_queue=max_queue, prefix_cache=PrefixCache(prefix)
    )
    if ranks.is_root:
        return True
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every local rank: rank 0 drains them
    state.scheduler.run_follower()
    return False
