"""`dgemma infill`: fill a template's holes in place, the fixed text pinned around them.

Thin over `dgemma_mlx.infill`: the template is read and parsed (a malformed one is one line) before
the model stack is imported; the live view (`span_view.InfillView`) draws the fixed text plain and
only the holes in the state colours, so what changes pass by pass is just the holes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.infill import CLOSE, DEFAULT_HOLE_TOKENS, OPEN, Template, parse_template

from .options import (
    GenerationFlags,
    ViewKind,
    check_utf8,
    force_option,
    loading,
    model_option,
    resolve_model,
    stderr,
    user_errors,
    view_option,
    with_generation_flags,
)

TEMPLATE_HINT = "'TEMPLATE'"


def read_template(template: str | None, file: Path | None) -> str:
    """The template's text, exactly: from the argument, `--file`, or stdin (`-`, or piped and no
    argument). Nothing is stripped, so the output keeps the template byte for byte."""
    if template is not None and file is not None:
        raise typer.BadParameter(
            "give the template as an argument or with --file, not both", param_hint="'--file'"
        )
    if file is not None:
        from dgemma_mlx.textfile import read_text_file

        return read_text_file(file, "template file").text
    if template is None:
        if sys.stdin is None or sys.stdin.isatty():
            message = "no template: pass it as an argument, with --file PATH, or on stdin (-)"
            raise typer.BadParameter(message, param_hint=TEMPLATE_HINT)
        template = "-"
    if template != "-":
        return check_utf8(template, TEMPLATE_HINT, "the template")
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as e:
        raise DGemmaError(f"stdin is not valid UTF-8 (at byte {e.start + 1})") from None


@with_generation_flags
def infill_command(
    template: str | None = typer.Argument(
        None, help="The template text; - reads stdin (the default when stdin is piped).", show_default=False
    ),
    file: Path | None = typer.Option(None, "--file", "-f", help="Read the template from a UTF-8 text file."),
    open_marker: str = typer.Option(OPEN, "--open", help="What starts a hole."),
    close_marker: str = typer.Option(CLOSE, "--close", help="What ends a hole."),
    fill_tokens: int = typer.Option(
        DEFAULT_HOLE_TOKENS, "--fill-tokens", min=1, help="Tokens of a hole written without :N."
    ),
    prefix_in_canvas: bool = typer.Option(
        False,
        "--prefix-in-canvas",
        help="Keep the text before the first hole on the canvas, not in the prompt.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="One JSON object: the text, each hole's text and passes."
    ),
    model: str | None = model_option(),
    view: ViewKind = view_option(),
    force: bool = force_option(),
    *,
    flags: GenerationFlags,
) -> None:
    r"""Fill the holes of a template, [\[fill]] or [\[fill:N]] (N tokens), with the text around them pinned.

    The filled text goes to stdout (the template's own text kept byte for byte), the live view and
    stats to stderr. Text before the first hole is the prompt; the holes see the text on both sides
    within their canvas.
    """
    with user_errors():
        if flags.max_tokens is not None:
            raise typer.BadParameter(
                "an infill's length comes from its template", param_hint="'--max-tokens'"
            )
        parsed = parse_template(read_template(template, file), open_marker, close_marker, fill_tokens)
        chosen = resolve_model(model)
        with loading(chosen, quiet=view == ViewKind.none):
            from dgemma_mlx import load

            model_obj, tokenizer = load(chosen, force=force)
        run_infill(model_obj, tokenizer, parsed, not prefix_in_canvas, as_json, view, flags)


def run_infill(
    model: Any,
    tokenizer: Any,
    template: Template,
    prefix_in_prompt: bool,
    as_json: bool,
    view: ViewKind,
    flags: GenerationFlags,
) -> None:
    """Generate with the view on stderr, then print the filled template (or its JSON) on stdout."""
    from dgemma_mlx.infill import InfillResult, infill_stream

    from .span_view import InfillView, make_span_view
    from .view import drive, print_stats

    if tokenizer is None:
        raise DGemmaError("this model ships no tokenizer: it cannot read a template")
    events = infill_stream(
        model, tokenizer, template, seed=flags.seed, prefix_in_prompt=prefix_in_prompt, **flags.overrides
    )
    result = drive(events, make_span_view(view.value, stderr, tokenizer, InfillView), InfillResult)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
    else:
        sys.stdout.write(result.text)
        if sys.stdout.isatty() and not result.text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    if view != ViewKind.none:
        print_stats(stderr, result.generation.stats)
