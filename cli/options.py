"""What every command shares: model resolution, generation options, view choice, and error handling.

Commands stay thin by declaring their options through these helpers and running inside
`user_errors()`, which turns every expected failure into one red line on stderr and an exit code
(1 user error, 130 interrupted) instead of a traceback. Usage errors (exit 2) are Typer's own.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from dgemma_mlx.errors import DGemmaError

MODEL_ENV = "DGEMMA_MODEL"
HOW_TO_GET_A_MODEL = (
    "convert one with `dgemma convert SOURCE -o DIR`, or watch the bundled demo model with `dgemma sudoku`"
)
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
PROMPT_HINT = "'-p' / '--prompt'"

# Rich looks up sys.stdout/sys.stderr at write time, so these also follow test runners' redirection.
# Plain lines go through `say`: piped, Rich would otherwise hard-wrap them at 80 columns.
stdout = Console()
stderr = Console(stderr=True)


class ViewKind(str, Enum):
    """How generation is shown on stderr: `auto` is live on a terminal and plain otherwise."""

    auto = "auto"
    live = "live"
    plain = "plain"
    none = "none"


def model_option() -> Any:
    return typer.Option(
        None,
        "--model",
        "-m",
        help=f"Model directory or Hugging Face repo [default: ${MODEL_ENV}].",
        show_default=False,
    )


def view_option() -> Any:
    return typer.Option(ViewKind.auto, "--view", help="live (terminal), plain (log lines) or none.")


def seed_option() -> Any:
    return typer.Option(None, "--seed", help="Sampling seed, for reproducible output.")


# Generation options, named as users know them, mapped onto generation_config.json names.
def max_tokens_option() -> Any:
    return typer.Option(None, "--max-tokens", min=1, help="New-token budget (rounded up to whole canvases).")


def steps_option() -> Any:
    return typer.Option(None, "--steps", min=1, help="Most denoising passes per canvas.")


def entropy_bound_option() -> Any:
    return typer.Option(None, "--entropy-bound", help="Per-pass entropy budget for accepting positions.")


def t_min_option() -> Any:
    return typer.Option(None, "--t-min", help="Temperature on the last pass.")


def t_max_option() -> Any:
    return typer.Option(None, "--t-max", help="Temperature on the first pass.")


def generation_overrides(
    max_tokens: int | None,
    steps: int | None,
    entropy_bound: float | None,
    t_min: float | None,
    t_max: float | None,
) -> dict[str, Any]:
    """CLI option values as generation_config overrides; unset options are left out."""
    values = {
        "max_new_tokens": max_tokens,
        "max_denoising_steps": steps,
        "entropy_bound": entropy_bound,
        "t_min": t_min,
        "t_max": t_max,
    }
    return {k: v for k, v in values.items() if v is not None}


def resolve_model(model: str | None) -> str:
    """--model, else $DGEMMA_MODEL; a missing choice is a user error that says how to get a model."""
    chosen = model or os.environ.get(MODEL_ENV)
    if not chosen:
        raise DGemmaError(f"no model given: pass --model DIR or set {MODEL_ENV} ({HOW_TO_GET_A_MODEL})")
    path = Path(chosen).expanduser()
    looks_like_repo = chosen.count("/") == 1 and not chosen.startswith((".", "/", "~"))
    if not path.exists() and not looks_like_repo:
        raise DGemmaError(f"{chosen}: no such model directory ({HOW_TO_GET_A_MODEL})")
    return chosen


def read_prompt(prompt: str | None) -> str:
    """`-p TEXT`, `-p -` (stdin), or stdin when it is piped and -p is absent."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise typer.BadParameter(
                "no prompt: pass -p TEXT, or pipe text in (-p - reads stdin)", param_hint=PROMPT_HINT
            )
        prompt = "-"
    text = sys.stdin.read() if prompt == "-" else prompt
    if not text.strip():
        empty = "the prompt is empty" + (" (nothing on stdin)" if prompt == "-" else "")
        raise typer.BadParameter(empty, param_hint=PROMPT_HINT)
    return text.strip("\n") if prompt == "-" else text


def say(console: Console, message: str | Text, style: str = "") -> None:
    """One plain line: word-wrapped on a terminal, never hard-wrapped when piped, never markup."""
    text = message if isinstance(message, Text) else Text(message, style=style)
    console.print(text, soft_wrap=not console.is_terminal, highlight=False)


def error_line(console: Console, message: str) -> None:
    """`error: message` in red; the message is text, never markup (paths may contain brackets)."""
    say(console, Text.assemble(("error:", "bold red"), " ", message))


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted") -> Iterator[None]:
    """Expected failures: one red line on stderr and exit 1; Ctrl-C exits 130; a closed pipe quietly.

    Every command runs inside this one handler. `interrupted` is what Ctrl-C prints (a command that
    cleans up says what it left behind). Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except DGemmaError as e:
        error_line(stderr, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        say(stderr, interrupted, style="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # `dgemma generate ... | head -1`: the reader left; say nothing, as Unix tools do.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        raise typer.Exit(0) from None
    except OSError as e:
        # Unreadable input, unwritable output, full disk: the user's environment, not a bug.
        where = f"{e.filename}: " if e.filename else ""
        reason = e.strerror or errno.errorcode.get(e.errno or 0, type(e).__name__)
        error_line(stderr, f"{where}{reason}")
        raise typer.Exit(EXIT_USER_ERROR) from None
