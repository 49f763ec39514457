"""`dgemma edit FILE --lines A-B --instruction TEXT`: rewrite a span, as a diff or in place.

Thin over `dgemma_mlx.edit` (the prompt, the starting canvas, the answer's clean-up) and
`dgemma_mlx.textfile` (binary refusal, the changed-on-disk check, the atomic replace with a backup).
Everything about the input (file, line range, instruction) is checked before the model stack loads.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from dgemma_mlx.errors import DGemmaError

if TYPE_CHECKING:
    from dgemma_mlx.edit import EditResult

from .options import (
    GenerationFlags,
    ViewKind,
    check_utf8,
    force_option,
    loading,
    model_option,
    resolve_model,
    say,
    stderr,
    user_errors,
    view_option,
    with_generation_flags,
)


@with_generation_flags
def edit_command(
    file: Path = typer.Argument(..., help="The UTF-8 text file to edit.", show_default=False),
    lines: str = typer.Option(..., "--lines", "-l", help="The span to rewrite: A-B (1-based, inclusive)."),
    instruction: str = typer.Option(..., "--instruction", "-i", help="What to do with the span."),
    in_place: bool = typer.Option(
        False,
        "--in-place",
        help="Write the result into FILE (atomically, keeping FILE.bak) instead of a diff.",
    ),
    backup_suffix: str = typer.Option(
        ".bak", "--backup-suffix", help="Suffix of the backup --in-place keeps."
    ),
    think: bool = typer.Option(
        False, "--think", help="Thinking mode; the thoughts are not part of the edit."
    ),
    model: str | None = model_option(),
    view: ViewKind = view_option(),
    force: bool = force_option(),
    *,
    flags: GenerationFlags,
) -> None:
    """Rewrite lines A-B of FILE as the instruction says, with the rest of the file as context.

    The canvas starts from the span's current text, so the live view shows the old text turning into
    the new. Prints a unified diff (stdout) unless --in-place. Binary files are refused, and so is a
    file that changed on disk while the model worked.
    """
    with user_errors():
        from dgemma_mlx.edit import parse_lines, split_span
        from dgemma_mlx.textfile import read_text_file

        check_utf8(instruction, "'--instruction'", "the instruction")
        if not instruction.strip():
            raise typer.BadParameter("the instruction is empty", param_hint="'--instruction'")
        if in_place and (not backup_suffix or "/" in backup_suffix):
            raise typer.BadParameter("a backup suffix such as .bak", param_hint="'--backup-suffix'")
        first, last = parse_lines(lines)
        source = read_text_file(file)
        span = split_span(source.text, first, last, str(file))
        chosen = resolve_model(model)
        with loading(chosen, quiet=view == ViewKind.none):
            from dgemma_mlx import load
            from dgemma_mlx.edit import EditResult, edit_stream

            from .span_view import EditView, make_span_view
            from .view import drive, print_stats

            model_obj, tokenizer = load(chosen, force=force)
        events = edit_stream(
            model_obj,
            tokenizer,
            source,
            span,
            instruction,
            seed=flags.seed,
            enable_thinking=think,
            **flags.overrides,
        )
        result = drive(events, make_span_view(view.value, stderr, tokenizer, EditView), EditResult)
        if view != ViewKind.none:
            print_stats(stderr, result.generation.stats)
        deliver(result, in_place, backup_suffix)


def deliver(result: EditResult, in_place: bool, backup_suffix: str) -> None:
    """The diff on stdout, or the file replaced atomically with a backup; a rewrite cut at the token
    budget is never written, and a file that changed on disk since it was read is refused either way."""
    from dgemma_mlx.textfile import ensure_unchanged, replace_atomically

    from .view import budget_warning

    name, span = result.source.path, result.span
    if result.cut_short:
        budget = result.generation.config.max_new_tokens
        if in_place:
            raise DGemmaError(
                f"the rewrite stopped at the token budget ({budget} new tokens) before the model "
                f"finished; {name} left as it was (raise --max-tokens)"
            )
        say(stderr, budget_warning(budget, "raise it with --max-tokens"))
    if not in_place:
        ensure_unchanged(result.source)  # a diff against a file that moved on would not apply
        sys.stdout.write(result.diff())
        sys.stdout.flush()
        return
    if result.new_text == result.source.text:
        say(stderr, f"{name}: no change")
        return
    backup = replace_atomically(result.source, result.new_text, backup_suffix)
    say(stderr, f"{name}: lines {span.first}-{span.last} rewritten; the original is kept in {backup}")
