"""The `dgemma` command: thin Typer functions over the dgemma_mlx Python API.

Each command parses options, calls the library (load, stream_generate, ChatSession, BatchRun,
convert, the Sudoku solver) and hands what comes back to a view; nothing here samples, batches or
renders by itself. Every command runs inside `user_errors()`. Exit codes: 0 success, 1 user error
(one red line, no traceback), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import json
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import typer

from .bench import bench_command
from .convert import convert_command
from .edit import edit_command
from .infill import infill_command
from .models import models_command
from .options import (
    EXIT_USER_ERROR,
    GenerationFlags,
    ViewKind,
    check_utf8,
    force_option,
    loading,
    model_option,
    read_prompt,
    require_file,
    resolve_model,
    say,
    stderr,
    stdout,
    user_errors,
    view_option,
    with_generation_flags,
)
from .pipeline import (
    check_launched,
    check_pipeline_prompt,
    is_follower,
    load_stage,
    peer_faults,
    pipeline_option,
)
from .serve import serve_command
from .sudoku import sudoku_command

app = typer.Typer(
    name="dgemma",
    help="DiffusionGemma on MLX: watch a canvas of noise turn into text, pass by pass.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class InputFormat(str, Enum):
    """`auto`: JSONL when the file ends in .jsonl or its first line starts with `{`."""

    auto = "auto"
    jsonl = "jsonl"
    text = "text"


def _version(value: bool) -> None:
    if value:
        try:
            stdout.print(f"dgemma-mlx {version('dgemma-mlx')}", highlight=False)
        except PackageNotFoundError:
            stdout.print("dgemma-mlx (not installed)", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    _: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """DiffusionGemma on MLX: watch a canvas of noise turn into text, pass by pass."""


@app.command()
@with_generation_flags
def generate(
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="The prompt; - reads stdin (the default when stdin is piped)."
    ),
    model: str | None = model_option(),
    system: str | None = typer.Option(None, "--system", help="System prompt (chat template only)."),
    chat_template: bool = typer.Option(
        True, "--chat-template/--raw", help="Wrap the prompt in the model's chat template, or send it raw."
    ),
    think: bool = typer.Option(False, "--think", help="Thinking mode; the thoughts go to stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: text, tokens, stats."),
    view: ViewKind = view_option(),
    force: bool = force_option(),
    pipeline: bool = pipeline_option(),
    *,
    flags: GenerationFlags,
) -> None:
    """Answer one prompt: the answer on stdout, the live view and stats on stderr."""
    with user_errors(), peer_faults(pipeline):
        if system and not chat_template:
            raise typer.BadParameter("--system needs the chat template (drop --raw)", param_hint="--system")
        if system is not None:
            check_utf8(system, "'--system'", "the system prompt")
        if pipeline:
            check_launched(pipeline)
            check_pipeline_prompt(prompt)
        text = read_prompt(prompt)
        chosen = resolve_model(model)
        with loading(chosen, quiet=view == ViewKind.none or is_follower(pipeline)):
            from dgemma_mlx import load, stream_generate

            from .view import drive, make_view, print_answer

            speak = True
            if pipeline:
                model_obj, tokenizer, ranks = load_stage(chosen, force)
                speak = ranks.is_root  # a follower runs its stage of every forward and says nothing
                view = view if speak else ViewKind.none
            else:
                model_obj, tokenizer = load(chosen, force=force)
        events = stream_generate(
            model_obj,
            tokenizer,
            text,
            seed=flags.seed,
            system=system,
            chat_template=chat_template,
            enable_thinking=think,
            **flags.overrides,
        )
        result = drive(events, make_view(view.value, stderr, tokenizer)).result
        if speak:
            print_answer(result, stderr, think=think, as_json=as_json, stats=view != ViewKind.none)


@app.command()
@with_generation_flags
def chat(
    model: str | None = model_option(),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    think: bool = typer.Option(False, "--think", help="Thinking mode, via the chat template's own switch."),
    load_file: Path | None = typer.Option(None, "--load", help="Continue a conversation saved with /save."),
    view: ViewKind = view_option(),
    force: bool = force_option(),
    pipeline: bool = pipeline_option(),
    *,
    flags: GenerationFlags,
) -> None:
    """Multi-turn chat on one session cache: each turn encodes only its new tokens. /help inside."""
    with user_errors(), peer_faults(pipeline):
        if system is not None:
            check_utf8(system, "'--system'", "the system prompt")
        if load_file is not None:
            require_file(load_file, "session file")
        check_launched(pipeline)
        chosen = resolve_model(model)
        with loading(chosen, quiet=view == ViewKind.none or is_follower(pipeline)):
            from dgemma_mlx import load
            from dgemma_mlx.session import ChatSession

            from .chat import ChatRepl

            ranks = None
            if pipeline:
                model_obj, tokenizer, ranks = load_stage(chosen, force)
            else:
                model_obj, tokenizer = load(chosen, force=force)
        session = ChatSession(model_obj, tokenizer, system=system, enable_thinking=think, seed=flags.seed)
        if load_file is not None and (ranks is None or ranks.is_root):
            session.load(load_file)
        session.set_params(**flags.overrides)
        if ranks is not None:
            from dgemma_mlx.pipeline_session import SharedSession, follow

            if not ranks.is_root:  # follows rank 0's turns (history, settings, --load included)
                follow(session, ranks)
                return
            session = SharedSession(session, ranks)
            try:
                ChatRepl(session, stdout, stderr, view.value).run()
            finally:
                session.close()
            return
        ChatRepl(session, stdout, stderr, view.value).run()


@app.command()
@with_generation_flags
def batch(
    input_name: str = typer.Argument(
        ...,
        metavar="IN",
        help="JSONL ({id, prompt|messages, ...} per line) or text (a prompt per line); - is stdin.",
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Results, appended as JSONL as each completes."),
    model: str | None = model_option(),
    batch_size: int = typer.Option(4, "--batch-size", "-b", min=1, help="Prompts generated together."),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT: skip ids already in it."),
    input_format: InputFormat = typer.Option(InputFormat.auto, "--format", help="Input format."),
    errors: Path | None = typer.Option(
        None, "--errors", help="Where malformed lines are listed [default: OUT with .errors.jsonl]."
    ),
    system: str | None = typer.Option(None, "--system", help="System prompt for lines without their own."),
    chat_template: bool = typer.Option(True, "--chat-template/--raw", help="Use the model's chat template."),
    force: bool = force_option(),
    rank_timeout: float = typer.Option(
        120.0, "--rank-timeout", min=1.0, help="Under mlx.launch: seconds before a silent rank is lost."
    ),
    pipeline: bool = pipeline_option(),
    *,
    flags: GenerationFlags,
) -> None:
    """Answer every prompt in a file; each result is appended and flushed to OUT the moment it is done.

    Malformed lines are reported with their line numbers (exit status 1) while the rest run. Under
    `mlx.launch` every rank runs the whole model and takes its share of the batches; rank 0 holds IN
    and OUT and writes every row, exactly as one process would.
    """
    with user_errors():
        if pipeline:
            check_launched(pipeline)
            from dgemma_mlx.pipeline import pipeline_ranks

            ranks = pipeline_ranks()
        else:
            from dgemma_mlx.distributed import init, launched

            ranks = init() if launched() else None
        if ranks is not None and (pipeline or ranks.distributed):
            from .distributed_batch import batch_across_ranks

            settings = {"batch_size": batch_size, "chat_template": chat_template, "system": system}
            args = (input_name, output, input_format.value, resume, errors)
            return batch_across_ranks(ranks, args, model, settings, flags, force, rank_timeout, pipeline)
        from dgemma_mlx.batch import BatchRun  # reads and checks the files; no model stack yet

        from .view import BatchProgress

        job = BatchRun(input_name, output, input_format.value, resume, errors)
        chosen = resolve_model(model)
        with loading(chosen):
            from dgemma_mlx import load

            model_obj, tokenizer = load(chosen, force=force)
        for bad in job.prepare(model_obj, tokenizer, flags.overrides, chat_template, system):
            say(stderr, f"skipped {bad}", style="yellow")
        with BatchProgress(stderr, len(job.jobs)) as progress:
            try:
                for row in job.run(model_obj, tokenizer, batch_size, flags.seed):
                    progress.advance(row["generated_tokens"])
            except KeyboardInterrupt:
                say(stderr, f"{job.written} results kept in {job.output}; continue with --resume")
                raise
        say(stderr, job.summary())
        if job.bad:
            raise typer.Exit(EXIT_USER_ERROR)


@app.command()
def info(
    model: str | None = model_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    pipeline: int | None = typer.Option(
        None, "--pipeline", min=2, metavar="N", help="Also show each rank's layers and memory on N machines."
    ),
) -> None:
    """What a model directory holds: geometry, parameters, quantization, size and estimated memory."""
    with user_errors():
        chosen = resolve_model(model)
        from dgemma_mlx.inspect import format_summary, summarize

        summary = summarize(chosen)
        text = format_summary(summary)
        if pipeline is not None:
            from dgemma_mlx.memory import CONTEXT_FOR_ESTIMATE
            from dgemma_mlx.pipeline_plan import format_shares, model_shares

            shares = model_shares(Path(summary["model_dir"]), pipeline, CONTEXT_FOR_ESTIMATE)
            summary["pipeline"] = [s.to_dict() for s in shares]
            text += "\n" + format_shares(shares, CONTEXT_FOR_ESTIMATE)
        print(json.dumps(summary) if as_json else text, flush=True)


# The commands that live in their own modules.
app.command("convert")(convert_command)
app.command("models")(models_command)
app.command("sudoku")(sudoku_command)
app.command("demo", help="Same as `sudoku`: the bundled model solving Sudoku live.")(sudoku_command)
app.command("bench")(bench_command)
app.command("infill")(infill_command)
app.command("edit")(edit_command)
app.command("serve")(serve_command)


def main() -> None:
    try:
        app(prog_name="dgemma")
    except SystemExit as done:  # Typer always ends this way
        from dgemma_mlx.distributed import leave_group  # standard library only

        leave_group(done.code)  # under mlx.launch: exit without the backend's teardown
        raise
