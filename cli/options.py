"""What every command shares: model resolution, generation options, view choice, and error handling.

Commands stay thin by declaring their options through these helpers and running inside
`user_errors()`, which turns every expected failure into one red line on stderr and an exit code
(1 user error, 130 interrupted) instead of a traceback. Usage errors (exit 2) are Typer's own.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from dgemma_mlx.errors import DGemmaError

MODEL_ENV = "DGEMMA_MODEL"
HOW_TO_GET_A_MODEL = (
    "see `dgemma models`, convert one with `dgemma convert SOURCE`, "
    "or watch the bundled demo model with `dgemma sudoku`"
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
        help=f"Model directory, name in `dgemma models`, or Hugging Face repo [default: ${MODEL_ENV}].",
        show_default=False,
    )


def force_option() -> Any:
    """--force for commands that load a model: skip the memory guard (dgemma_mlx/memory.py)."""
    return typer.Option(
        False, "--force", help="Load the model even when it looks too big for this machine's memory."
    )


def view_option() -> Any:
    return typer.Option(ViewKind.auto, "--view", help="live (terminal), plain (log lines) or none.")


@dataclass(frozen=True)
class GenerationFlags:
    """The generation options every generating command shares, as the user typed them."""

    max_tokens: int | None = None
    steps: int | None = None
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    seed: int | None = None
    fast: str | None = None  # a preset of dgemma_mlx/fast_presets.py
    max_passes: int | None = None
    accept_confidence: float | None = None
    commit_confidence: float | None = None
    commit_stability: int | None = None
    self_conditioning_top_k: int | None = None

    @property
    def overrides(self) -> dict[str, Any]:
        """As generation_config overrides (its names), the --fast preset expanded (explicit knobs win);
        options left unset are left out."""
        from dgemma_mlx.fast_presets import FAST_FIELDS, FAST_KEY, expand  # plain Python: no MLX

        values = {
            "max_new_tokens": self.max_tokens,
            "max_denoising_steps": self.steps,
            "entropy_bound": self.entropy_bound,
            "t_min": self.t_min,
            "t_max": self.t_max,
            **{name: getattr(self, name) for name in FAST_FIELDS},
        }
        if self.fast is not None:
            values = expand({FAST_KEY: self.fast, **values})
        return {k: v for k, v in values.items() if v is not None}


def _fast_options() -> dict[str, tuple[Any, Any]]:
    """--fast PRESET and one option per fast-decoding knob (off by default: the reference sampler)."""
    from dgemma_mlx.fast_presets import KNOBS, PRESETS, describe

    presets = "; ".join(describe(name) for name in PRESETS)
    options: dict[str, tuple[Any, Any]] = {
        "fast": (
            str | None,
            typer.Option(
                None,
                "--fast",
                metavar="PRESET",
                help=f"Opt-in fast decoding preset ({presets}); knobs given too win. Off by default.",
                rich_help_panel="Fast decoding (opt-in)",
            ),
        )
    }
    kinds = {"max_passes": int, "commit_stability": int, "self_conditioning_top_k": int}
    for name, text in KNOBS.items():
        flag = "--" + name.replace("_", "-")
        option = typer.Option(None, flag, help=text, rich_help_panel="Fast decoding (opt-in)")
        options[name] = (kinds.get(name, float) | None, option)
    return options


# Declared once, added to each generating command by `with_generation_flags`.
_FLAG_OPTIONS: dict[str, tuple[Any, Any]] = {
    "max_tokens": (
        int | None,
        typer.Option(None, "--max-tokens", min=1, help="New-token budget (rounded up to whole canvases)."),
    ),
    "steps": (int | None, typer.Option(None, "--steps", min=1, help="Most denoising passes per canvas.")),
    "entropy_bound": (
        float | None,
        typer.Option(None, "--entropy-bound", help="Per-pass entropy budget for accepting positions."),
    ),
    "t_min": (float | None, typer.Option(None, "--t-min", help="Temperature on the last pass.")),
    "t_max": (float | None, typer.Option(None, "--t-max", help="Temperature on the first pass.")),
    "seed": (int | None, typer.Option(None, "--seed", help="Sampling seed, for reproducible output.")),
    **_fast_options(),
}


def with_generation_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the shared generation options; it receives them as `flags: GenerationFlags`.

    Typer builds options from the signature, so the wrapper shows Typer the command's own
    parameters (minus `flags`) followed by the shared ones, and folds those back into one object,
    checked (`check_fields`) before the command reads a file or imports the model stack.
    """
    own = inspect.signature(command, eval_str=True)
    kept = [p for p in own.parameters.values() if p.name != "flags"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)
        for name, (annotation, option) in _FLAG_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from dgemma_mlx.generation_config import check_fields  # plain Python: no model stack

        flags = GenerationFlags(**{name: kwargs.pop(name) for name in _FLAG_OPTIONS})
        with user_errors():  # a bad value (nan, a negative bound) is one line before anything is read
            check_fields(**flags.overrides)
        return command(**kwargs, flags=flags)

    wrapper.__signature__ = own.replace(parameters=kept + added)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in kept + added}
    return wrapper


def resolve_model(model: str | None) -> str:
    """--model, else $DGEMMA_MODEL; a missing choice is a user error that says how to get a model.

    A path that does not exist is reported here as missing unless it is a name in the models folder or
    reads as a hub id (`hub.looks_like_repo`: a typo under an existing local folder does not).
    """
    chosen = model or os.environ.get(MODEL_ENV)
    if not chosen:
        raise DGemmaError(f"no model given: pass --model DIR or set {MODEL_ENV} ({HOW_TO_GET_A_MODEL})")
    from dgemma_mlx.hub import home_model, looks_like_repo

    path = Path(chosen).expanduser()
    if not path.exists() and home_model(chosen) is None and not looks_like_repo(chosen):
        raise DGemmaError(f"{chosen}: no such model directory ({HOW_TO_GET_A_MODEL})")
    return chosen


def check_utf8(text: str, param_hint: str, where: str = "") -> str:
    """`text` as given, if it is valid UTF-8: an argument Python decoded with surrogateescape (a byte
    that is not UTF-8) is a usage error that names the first bad byte, not a traceback later on."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = text[e.start].encode("utf-8", "surrogateescape")
        at = f"character {e.start + 1}"
        detail = f"byte 0x{byte[0]:02x} at {at}" if len(byte) == 1 else at
        message = f"{where or 'the text'} is not valid UTF-8 ({detail})"
        raise typer.BadParameter(message, param_hint=param_hint) from None
    return text


def read_stdin() -> str:
    """All of stdin as UTF-8 text; bytes that are not UTF-8 are a usage error that names the first one."""
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1]
        message = f"stdin is not valid UTF-8 (byte 0x{bad.hex() or '??'} at byte {e.start + 1})"
        raise typer.BadParameter(message, param_hint=PROMPT_HINT) from None


def read_prompt(prompt: str | None) -> str:
    """`-p TEXT`, `-p -` (stdin), or stdin when it is piped and -p is absent; UTF-8 only."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise typer.BadParameter(
                "no prompt: pass -p TEXT, or pipe text in (-p - reads stdin)", param_hint=PROMPT_HINT
            )
        prompt = "-"
    text = read_stdin() if prompt == "-" else prompt
    check_utf8(text, PROMPT_HINT, "stdin" if prompt == "-" else "the prompt")
    if not text.strip():
        empty = "the prompt is empty" + (" (nothing on stdin)" if prompt == "-" else "")
        raise typer.BadParameter(empty, param_hint=PROMPT_HINT)
    return text.strip("\n") if prompt == "-" else text


def require_file(path: Path, what: str) -> Path:
    """A file the command will read, checked before any heavy import: missing or a directory is one line."""
    if not path.exists():
        raise DGemmaError(f"{path}: no such {what}")
    if path.is_dir():
        raise DGemmaError(f"{path}: is a directory, not a {what}")
    return path


@contextlib.contextmanager
def loading(name: str | os.PathLike[str], quiet: bool = False) -> Iterator[None]:
    """`loading NAME…` on stderr the moment a command starts to load a model (imports included):
    a spinner on a terminal, one plain line otherwise, nothing when `quiet`. Never on stdout."""
    message = Text(f"loading {os.fspath(name)}…", style="dim")
    if quiet:
        yield
    elif stderr.is_terminal:
        with stderr.status(message):
            yield
    else:
        say(stderr, message)
        yield


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
