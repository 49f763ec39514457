"""`dgemma serve`: an OpenAI-compatible local server (the work is in dgemma_mlx/server/).

Nothing of the server stack is imported until the command runs, so `dgemma --help` stays fast.
"""

from __future__ import annotations

import typer

from .options import force_option, loading, model_option, resolve_model, say, stderr, user_errors
from .pipeline import check_launched, follow_or_lead, is_follower, load_stage, peer_faults, pipeline_option

API_KEY_ENV = "DGEMMA_API_KEY"


def serve_command(
    model: str | None = model_option(),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (a non-local one is warned about)."
    ),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0: any free port, printed)."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar=API_KEY_ENV,
        show_envvar=True,
        help="Require `Authorization: Bearer KEY` on every /v1 route.",
    ),
    served_name: str | None = typer.Option(
        None, "--served-model-name", help="The model id clients send [default: the --model given]."
    ),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Most rows (choices) denoised together."),
    max_queue: int = typer.Option(64, "--max-queue", min=0, help="Requests that may wait; more get 429."),
    max_prompt_tokens: int = typer.Option(
        8192, "--max-prompt-tokens", min=1, help="Longest prompt accepted."
    ),
    max_body_kb: int = typer.Option(4096, "--max-body-kb", min=1, help="Largest request body accepted."),
    prefix_cache: int = typer.Option(16, "--prefix-cache", min=0, help="Encoded prompts kept for reuse."),
    shutdown_timeout: float = typer.Option(
        30.0, "--shutdown-timeout", min=0, help="Seconds running requests get to finish on SIGINT/SIGTERM."
    ),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level (info logs requests)."),
    force: bool = force_option(),
    pipeline: bool = pipeline_option(),
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API; concurrent requests share canvas batches.

    With --pipeline under mlx.launch, rank 0 serves HTTP and schedules; the other ranks follow."""
    with user_errors(), peer_faults(pipeline):
        chosen = resolve_model(model)
        if api_key is not None and not api_key.strip():
            raise typer.BadParameter("the API key is empty", param_hint="'--api-key'")
        from dgemma_mlx.server.run import check_bindable  # light: socket and uvicorn only

        check_launched(pipeline)
        follower = is_follower(pipeline)
        if not follower:  # only rank 0 listens
            check_bindable(host, port)  # a port in use is one line before the model loads
        with loading(chosen, quiet=follower):
            from dgemma_mlx import load
            from dgemma_mlx.server.app import build_state, create_app
            from dgemma_mlx.server.run import is_local, serve

            if pipeline:
                model_obj, tokenizer, ranks = load_stage(chosen, force)
            else:
                model_obj, tokenizer = load(chosen, force=force)
        state = build_state(
            model_obj,
            tokenizer,
            served_name or chosen,
            max_batch=max_batch,
            max_queue=max_queue,
            prefix_entries=prefix_cache,
            max_prompt_tokens=max_prompt_tokens,
            api_key=api_key.strip() if api_key else None,
            max_body_bytes=max_body_kb * 1024,
        )
        if pipeline and not follow_or_lead(state, model_obj, ranks, max_batch, max_queue, prefix_cache):
            return
        if not is_local(host):
            exposed = "" if api_key else "; anyone who can reach it can use it (set --api-key)"
            say(
                stderr,
                f"warning: listening on {host}, reachable from other machines{exposed}",
                style="yellow",
            )
        announce = lambda message: say(stderr, message)  # noqa: E731
        serve(create_app(state), state.scheduler, host, port, shutdown_timeout, announce, log_level=log_level)
        say(stderr, "stopped")
