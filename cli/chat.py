"""The `dgemma chat` REPL: one ChatSession (one encoder cache), slash commands, readline history.

Each turn only encodes what the cache has not seen (the session does that); this module only reads
lines, dispatches slash commands and shows answers. Ctrl-C during an answer stops it, keeps the user turn
and the answer's committed tokens in the history (as llama.cpp and ollama do) and returns to the prompt;
Ctrl-C at the prompt clears the line; Ctrl-D quits. Keys typed during an answer are neither echoed
(they would break the live view) nor sent.
Answers go to stdout; the live view, thinking, stats and notices go to stderr.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TextIO

from rich.console import Console
from rich.text import Text

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.events import CanvasEvent, FinishEvent, GenerationResult
from dgemma_mlx.generation_config import parse_overrides
from dgemma_mlx.session import ChatSession

from .options import error_line, say
from .view import budget_warning, make_view, print_stats

HISTORY_ENV = "DGEMMA_HISTORY"
HISTORY_LENGTH = 1000
COMMANDS = {
    "/help": "this list",
    "/reset": "forget the conversation (keeps the system prompt)",
    "/system [TEXT]": "set the system prompt (no text: clear it)",
    "/params [key=value ...]": "show or change generation parameters (value none unsets)",
    "/think [on|off]": "thinking mode, via the chat template's own switch",
    "/save FILE": "write the conversation to a JSON file",
    "/load FILE": "continue a saved conversation",
    "/quit": "leave (or Ctrl-D)",
}


@contextlib.contextmanager
def echo_off(stream: TextIO | None) -> Iterator[None]:
    """The terminal on `stream` does not echo typed keys inside the block; settings restored on any exit
    (Ctrl-C included). Nothing happens off a terminal, without termios (not POSIX) or for None.

    Echoed keys (an Enter above all) move the cursor under Rich's live view, which then redraws from the
    wrong line and leaves stale frames behind. Keys typed inside the block are discarded when it ends
    (TCSAFLUSH): the user never saw them, so they are not sent as the next message.
    """
    try:
        import termios
    except ImportError:  # not POSIX: nothing to switch off
        termios = None  # type: ignore[assignment]
    fd, saved = None, None
    if termios is not None and stream is not None:
        try:
            if stream.isatty():
                fd = stream.fileno()
                saved = termios.tcgetattr(fd)
                quiet = list(saved)
                quiet[3] &= ~(termios.ECHO | termios.ECHONL)
                termios.tcsetattr(fd, termios.TCSADRAIN, quiet)
        except (OSError, ValueError, AttributeError, termios.error):
            fd, saved = None, None
    try:
        yield
    finally:
        if termios is not None and fd is not None and saved is not None:
            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def history_path() -> Path:
    return Path(os.environ.get(HISTORY_ENV) or Path.home() / ".dgemma_history").expanduser()


class ChatRepl:
    """Reads lines, runs slash commands, streams answers through a view."""

    def __init__(
        self,
        session: ChatSession,
        out: Console,
        err: Console,
        view_kind: str = "auto",
        interactive: bool | None = None,
    ):
        self.session = session
        self.out = out
        self.err = err
        self.view_kind = view_kind
        self.interactive = sys.stdin.isatty() if interactive is None else interactive
        self.readline: ModuleType | None = None

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        self._start_history()
        self.note(f"dgemma chat · {self.session.model.model_dir} · /help for commands, Ctrl-D to quit")
        try:
            while True:
                try:
                    line = input("you> " if self.interactive else "")
                except EOFError:
                    if self.interactive:
                        self.out.print()
                    return
                except KeyboardInterrupt:  # at the prompt: drop the line, like a shell
                    self.out.print()
                    continue
                line = line.strip()
                if not line:
                    continue
                try:
                    if line.startswith("/"):
                        if not self.command(line):
                            return
                    else:
                        self.answer(line)
                except DGemmaError as e:
                    error_line(self.err, str(e))
                except KeyboardInterrupt:  # a second Ctrl-C while reporting the first
                    self.note("interrupted")
        finally:
            self._save_history()

    # -- history -------------------------------------------------------------------------------------
    def _start_history(self) -> None:
        """Arrow-key history via readline (libedit on macOS), only on an interactive terminal."""
        if not self.interactive:
            return
        try:
            import readline
        except ImportError:  # e.g. Windows without pyreadline: plain input() still works
            return
        self.readline = readline
        readline.set_history_length(HISTORY_LENGTH)
        with contextlib.suppress(OSError):
            readline.read_history_file(history_path())

    def _save_history(self) -> None:
        if self.readline is None:
            return
        with contextlib.suppress(OSError):
            self.readline.write_history_file(history_path())

    # -- output helpers ------------------------------------------------------------------------------
    def note(self, message: str) -> None:
        say(self.err, message, style="dim")

    def show_answer(self, result: GenerationResult) -> None:
        thought, answer = result.thinking[0], result.answer
        if thought:
            say(self.err, f"thinking: {thought}", style="dim italic")
        if self.interactive:
            self.out.print(Text.assemble(("dgemma> ", "bold cyan"), answer))
        else:
            say(self.out, answer)
        if self.view_kind != "none":
            print_stats(self.err, result.stats)
        if result.finish_reasons[0] == "length":
            say(self.err, budget_warning(result.config.max_new_tokens, "raise it with /params max_tokens=N"))

    # -- one turn ------------------------------------------------------------------------------------
    def answer(self, text: str) -> None:
        """Stream one answer; Ctrl-C stops it and keeps what was committed (`ChatSession.keep_partial`).

        While the answer streams, the terminal does not echo keystrokes (`echo_off`), so typing cannot
        break the live view; what was typed meanwhile is discarded, not sent unseen.
        """
        stream = self.session.stream(text)
        final = None
        committed: list[int] = []
        before = len(self.session.messages)
        view = make_view(self.view_kind, self.err, self.session.tokenizer, title="dgemma")
        try:
            with echo_off(sys.stdin if self.interactive else None), view:
                for event in stream:
                    view.handle(event)
                    if isinstance(event, CanvasEvent):
                        committed.extend(int(t) for t in event.tokens[0])
                    elif isinstance(event, FinishEvent):
                        final = event.result
        except KeyboardInterrupt:
            stream.close()
            if final is None:
                self.interrupted(text, committed, finished=len(self.session.messages) != before)
                return
        if final is not None:
            self.show_answer(final)

    def interrupted(self, text: str, committed: list[int], finished: bool) -> None:
        """Ctrl-C during an answer: keep the user turn and the committed part of the answer, if any."""
        kept = 0 if finished else self.session.keep_partial(text, committed)
        if finished:
            message = "⏹ answer interrupted after it was complete (kept in the history)"
        elif kept:
            message = f"⏹ answer interrupted: kept the {kept} committed tokens in the history"
        else:
            message = "⏹ answer interrupted before any text was committed (this turn dropped)"
        say(self.err, message, style="yellow")

    # -- slash commands ------------------------------------------------------------------------------
    def session_file(self, name: str, args: str) -> None:
        """/save FILE or /load FILE: an unwritable or unreadable file is an error line, not the end."""
        if not args:
            raise DGemmaError(f"{name} needs a file name")
        path = Path(args).expanduser()
        try:
            if name == "/save":
                self.session.save(path)
            else:
                self.session.load(path)
        except OSError as e:
            raise DGemmaError(f"{args}: {e.strerror or e}") from None
        done = f"saved {len(self.session.messages)} messages to" if name == "/save" else (
            f"loaded {len(self.session.messages)} messages from"
        )
        self.note(f"{done} {args}")

    def command(self, line: str) -> bool:
        """Run a slash command; returns False when the user asked to quit."""
        name, _, args = line.partition(" ")
        args = args.strip()
        session = self.session
        if name in ("/quit", "/exit", "/q"):
            return False
        if name == "/reset":
            session.reset()
            self.note("conversation cleared")
        elif name == "/system":
            session.set_system(args or None)
            self.note("system prompt set" if args else "system prompt cleared")
        elif name == "/params":
            if args:
                # replace_explicit so that `none` really unsets (e.g. stability_threshold=none).
                try:
                    overrides = parse_overrides(args)
                except DGemmaError as e:
                    raise DGemmaError(f"/params: {e}") from None
                session.config = session.config.replace_explicit(**overrides)
            for key, value in session.config.to_dict().items():
                say(self.err, f"  {key} = {value}")
        elif name == "/think":
            if args not in ("", "on", "off"):
                raise DGemmaError("/think takes on or off")
            session.enable_thinking = (args or "on") == "on"
            self.note(f"thinking {'on' if session.enable_thinking else 'off'}")
        elif name in ("/save", "/load"):
            self.session_file(name, args)
        elif name == "/help":
            for usage, what in COMMANDS.items():
                say(self.err, f"  {usage:26s} {what}")
        else:
            raise DGemmaError(f"unknown command {name} (try /help)")
        return True
