"""The `dgemma` command: thin Typer commands over the dgemma_mlx Python API."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from dgemma_mlx.convert.command import convert_command
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.sudoku.command import sudoku_command

from .options import model_option, resolve_model, stderr, user_errors
from .view import consume, make_progress, make_view, print_stats

app = typer.Typer(
    name="dgemma",
    help="DiffusionGemma on MLX: watch a canvas of noise turn into text, pass by pass.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("sudoku")(sudoku_command)
app.command("demo", help="Alias of `sudoku`: the bundled model solving Sudoku live.")(sudoku_command)
app.command("convert")(convert_command)


class ViewKind(str, Enum):
    auto = "auto"
    live = "live"
    plain = "plain"
    none = "none"


@app.command()
def generate(
    prompt: str = typer.Option(..., "--prompt", "-p", help="the prompt, or - to read stdin"),
    model: str | None = model_option(),
    system: str | None = typer.Option(None, "--system", help="system prompt (chat template only)"),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="new-token budget (whole canvases)"),
    steps: int | None = typer.Option(None, "--steps", help="max denoising passes per canvas"),
    entropy_bound: float | None = typer.Option(None, "--entropy-bound"),
    t_min: float | None = typer.Option(None, "--t-min"),
    t_max: float | None = typer.Option(None, "--t-max"),
    seed: int | None = typer.Option(None, "--seed"),
    chat_template: bool = typer.Option(True, "--chat-template/--raw", help="render with the chat template"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (text, tokens, stats)"),
    view: ViewKind = typer.Option(ViewKind.auto, "--view", help="live on a terminal, plain otherwise"),
) -> None:
    """One-shot generation: the answer on stdout, the view and stats on stderr."""
    with user_errors():
        from dgemma_mlx import load, stream_generate

        text = sys.stdin.read() if prompt == "-" else prompt
        model_obj, tokenizer = load(resolve_model(model))
        events = stream_generate(
            model_obj,
            tokenizer,
            text,
            seed=seed,
            system=system,
            chat_template=chat_template,
            max_new_tokens=max_tokens,
            max_denoising_steps=steps,
            entropy_bound=entropy_bound,
            t_min=t_min,
            t_max=t_max,
        )
        result = consume(events, make_view("none" if as_json else view.value, stderr, tokenizer)).result
        if as_json:
            payload = {"text": result.text, "tokens": result.new_tokens[0], "stats": result.stats.to_dict()}
            print(json.dumps(payload, ensure_ascii=False))
        else:
            print(result.text)
            if view != ViewKind.none:
                print_stats(stderr, result.stats)


@app.command()
def chat(
    model: str | None = model_option(),
    system: str | None = typer.Option(None, "--system", help="system prompt"),
    think: bool = typer.Option(False, "--think", help="thinking mode, via the chat template's own switch"),
    seed: int | None = typer.Option(None, "--seed"),
    view: ViewKind = typer.Option(ViewKind.auto, "--view", help="live on a terminal, plain otherwise"),
) -> None:
    """Multi-turn chat on one session cache: each turn encodes only its new tokens."""
    with user_errors():
        from dgemma_mlx import load
        from dgemma_mlx.session import ChatSession

        from .chat import repl

        model_obj, tokenizer = load(resolve_model(model))
        session = ChatSession(model_obj, tokenizer, system=system, enable_thinking=think, seed=seed)
        repl(session, Console(), view.value)


@app.command()
def batch(
    input_path: Path = typer.Argument(
        ..., metavar="IN", help="JSONL ({id, prompt|messages, ...}) or text lines"
    ),
    output: Path = typer.Option(..., "--output", "-o", help="results are appended here as JSONL"),
    model: str | None = model_option(),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="prompts generated together"),
    resume: bool = typer.Option(False, "--resume", help="skip ids already in OUT"),
    seed: int | None = typer.Option(None, "--seed"),
) -> None:
    """Generate for every prompt in a file; each result is appended and flushed as soon as it is done."""
    with user_errors():
        from dgemma_mlx import load
        from dgemma_mlx.batch import BadLine, completed_ids, read_requests, run_batch

        items = list(read_requests(input_path))
        bad = [i for i in items if isinstance(i, BadLine)]
        errors_path = output.with_name(output.name + ".errors")
        if bad:
            errors_path.write_text("".join(f"line {b.line}: {b.reason}\n" for b in bad))
            for b in bad:
                stderr.print(f"[yellow]skipped line {b.line}:[/] {b.reason}", highlight=False)
        if output.exists() and not resume:
            raise DGemmaError(f"{output} exists: pass --resume to continue it, or choose another file")
        done = completed_ids(output)
        todo = [i for i in items if not isinstance(i, BadLine) and i.id not in done]
        model_obj, tokenizer = load(resolve_model(model))
        with make_progress(stderr, len(todo)) as progress:
            task = progress.add_task("prompts", total=len(todo))
            run_batch(
                model_obj,
                tokenizer,
                todo,
                output,
                batch_size,
                seed,
                on_done=lambda rows: progress.advance(task, len(rows)),
            )
        stderr.print(
            f"{len(todo)} done, {len(done)} already in {output}, {len(bad)} malformed", highlight=False
        )
        if bad:
            raise typer.Exit(1)


@app.command()
def info(model: str | None = model_option()) -> None:
    """What a model directory holds: geometry, parameters, quantization, size, estimated memory."""
    with user_errors():
        from dgemma_mlx.inspect import describe

        Console().print(describe(resolve_model(model)))


def main() -> None:
    app()
