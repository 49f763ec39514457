"""The `dgemma` command: thin Typer functions over the dgemma_mlx Python API.

Each command parses options, calls the library (load, stream_generate, ChatSession, batch) and hands
events to a view; nothing here samples, batches or renders by itself. Exit codes: 0 success, 1 user
error (one red line, no traceback), 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import json
from enum import Enum
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import typer

from .options import (
    EXIT_USER_ERROR,
    ViewKind,
    entropy_bound_option,
    generation_overrides,
    max_tokens_option,
    model_option,
    read_prompt,
    resolve_model,
    say,
    seed_option,
    stderr,
    stdout,
    steps_option,
    t_max_option,
    t_min_option,
    user_errors,
    view_option,
)

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
def generate(
    prompt: str | None = typer.Option(
        None, "--prompt", "-p", help="The prompt; - reads stdin (the default when stdin is piped)."
    ),
    model: str | None = model_option(),
    system: str | None = typer.Option(None, "--system", help="System prompt (chat template only)."),
    max_tokens: int | None = max_tokens_option(),
    steps: int | None = steps_option(),
    entropy_bound: float | None = entropy_bound_option(),
    t_min: float | None = t_min_option(),
    t_max: float | None = t_max_option(),
    seed: int | None = seed_option(),
    chat_template: bool = typer.Option(
        True, "--chat-template/--raw", help="Wrap the prompt in the model's chat template, or send it raw."
    ),
    think: bool = typer.Option(False, "--think", help="Thinking mode; the thoughts go to stderr."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: text, tokens, stats."),
    view: ViewKind = view_option(),
) -> None:
    """Answer one prompt: the answer on stdout, the live view and stats on stderr."""
    with user_errors():
        from dgemma_mlx import load, stream_generate
        from dgemma_mlx.api import resolve_config

        from .view import budget_warning, drive, make_view, print_stats, split_answer

        if system and not chat_template:
            raise typer.BadParameter("--system needs the chat template (drop --raw)", param_hint="--system")
        text = read_prompt(prompt)
        model_obj, tokenizer = load(resolve_model(model))
        overrides = generation_overrides(max_tokens, steps, entropy_bound, t_min, t_max)
        budget = resolve_config(model_obj, tokenizer, None, **overrides).max_new_tokens
        events = stream_generate(
            model_obj,
            tokenizer,
            text,
            seed=seed,
            system=system,
            chat_template=chat_template,
            enable_thinking=think,
            **overrides,
        )
        result = drive(events, make_view(view.value, stderr, tokenizer))
        thinking, answer = split_answer(tokenizer, result)
        if as_json:
            payload: dict[str, Any] = {"text": answer, "tokens": result.new_tokens[0]}
            if think:
                payload["thinking"] = thinking
            payload |= {"finished": result.finished[0], "stats": result.stats.to_dict()}
            print(json.dumps(payload, ensure_ascii=False), flush=True)
        else:
            if thinking:
                say(stderr, f"thinking: {thinking}", style="dim italic")
            print(answer, flush=True)
        if view != ViewKind.none:
            print_stats(stderr, result.stats)
        if not result.finished[0]:
            say(stderr, budget_warning(budget, "raise it with --max-tokens"))


@app.command()
def chat(
    model: str | None = model_option(),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    think: bool = typer.Option(False, "--think", help="Thinking mode, via the chat template's own switch."),
    load_file: Path | None = typer.Option(None, "--load", help="Continue a conversation saved with /save."),
    max_tokens: int | None = max_tokens_option(),
    steps: int | None = steps_option(),
    entropy_bound: float | None = entropy_bound_option(),
    t_min: float | None = t_min_option(),
    t_max: float | None = t_max_option(),
    seed: int | None = seed_option(),
    view: ViewKind = view_option(),
) -> None:
    """Multi-turn chat on one session cache: each turn encodes only its new tokens. /help inside."""
    with user_errors():
        from dgemma_mlx import load
        from dgemma_mlx.session import ChatSession

        from .chat import ChatRepl

        model_obj, tokenizer = load(resolve_model(model))
        session = ChatSession(model_obj, tokenizer, system=system, enable_thinking=think, seed=seed)
        if load_file is not None:
            session.load(load_file)
        session.set_params(**generation_overrides(max_tokens, steps, entropy_bound, t_min, t_max))
        ChatRepl(session, stdout, stderr, view.value).run()


@app.command()
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
    max_tokens: int | None = max_tokens_option(),
    steps: int | None = steps_option(),
    entropy_bound: float | None = entropy_bound_option(),
    t_min: float | None = t_min_option(),
    t_max: float | None = t_max_option(),
    seed: int | None = seed_option(),
) -> None:
    """Answer every prompt in a file; each result is appended and flushed to OUT the moment it is done.

    Malformed lines are reported with their line numbers (exit status 1) while the rest run.
    """
    with user_errors():
        from dgemma_mlx import batch as lib
        from dgemma_mlx import load
        from dgemma_mlx.errors import DGemmaError

        from .view import BatchProgress

        requests, bad = lib.read_requests(lib.open_input(input_name), input_format.value)
        output = output.expanduser()
        if output.exists() and output.stat().st_size > 0 and not resume:
            raise DGemmaError(f"{output} already has results: pass --resume to continue it, or remove it")
        done = lib.completed_ids(output) if resume else set()
        todo = [r for r in requests if r.key not in done]
        model_obj, tokenizer = load(resolve_model(model))
        overrides = generation_overrides(max_tokens, steps, entropy_bound, t_min, t_max)
        jobs, unrunnable = lib.prepare(model_obj, tokenizer, todo, overrides, chat_template, system)
        bad = sorted(bad + unrunnable, key=lambda b: b.line)
        errors_path = errors or lib.errors_path_for(output)
        lib.write_errors(errors_path, bad)
        for b in bad:
            say(stderr, f"skipped {b}", style="yellow")
        cut_short = 0
        with lib.ResultWriter(output) as writer, BatchProgress(stderr, len(jobs)) as progress:
            try:
                for row in lib.run_batches(model_obj, tokenizer, jobs, writer, batch_size, seed):
                    cut_short += not row["finished"]
                    progress.advance(row["generated_tokens"])
            except KeyboardInterrupt:
                say(stderr, f"{writer.written} results kept in {output}; continue with --resume")
                raise
        summary = f"{writer.written} written to {output}"
        if cut_short:
            summary += f' ({cut_short} stopped at the token budget: "finished": false)'
        if done:
            summary += f", {len(requests) - len(todo)} already there"
        if bad:
            summary += f", {len(bad)} malformed (listed in {errors_path})"
        say(stderr, summary)
        if bad:
            raise typer.Exit(EXIT_USER_ERROR)


@app.command()
def info(
    model: str | None = model_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """What a model directory holds: geometry, parameters, quantization, size and estimated memory."""
    with user_errors():
        from dgemma_mlx.inspect import format_summary, summarize

        summary = summarize(resolve_model(model))
        if as_json:
            print(json.dumps(summary), flush=True)
        else:
            print(format_summary(summary), flush=True)


def _register(module: str, attr: str, *names: str, **kwargs: Any) -> None:
    """Commands owned by other modules; skipped when the module is not part of this install."""
    try:
        command = getattr(import_module(module), attr)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return
        raise
    for name in names:
        app.command(name, **kwargs)(command)


_register("dgemma_mlx.cli.convert", "convert_command", "convert")
_register("dgemma_mlx.sudoku.command", "sudoku_command", "sudoku")
_register(
    "dgemma_mlx.sudoku.command",
    "sudoku_command",
    "demo",
    help="Same as `sudoku`: the bundled model solving Sudoku live.",
)


def main() -> None:
    app(prog_name="dgemma")
