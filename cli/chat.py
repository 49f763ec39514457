"""The `dgemma chat` REPL: one session cache, slash commands, readline history, Ctrl-C stops an answer."""

from __future__ import annotations

import contextlib
from pathlib import Path

from rich.console import Console

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.events import FinishEvent
from dgemma_mlx.session import ChatSession

from .view import make_view, print_stats

HELP = "/reset  /system TEXT  /params [key=value ...]  /save FILE  /load FILE  /quit   (Ctrl-D exits)"
HISTORY = Path.home() / ".dgemma_history"


def _readline():
    """Arrow-key history where the platform has readline (libedit on macOS); plain input() otherwise."""
    try:
        import readline
    except ImportError:
        return None
    with contextlib.suppress(OSError):
        readline.read_history_file(HISTORY)
    return readline


def _parse_params(args: str) -> dict:
    out = {}
    for pair in args.split():
        if "=" not in pair:
            raise DGemmaError(f"/params takes key=value pairs, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            out[key] = int(value)
        except ValueError:
            try:
                out[key] = float(value)
            except ValueError:
                out[key] = None if value.lower() == "none" else value
    return out


def handle_command(session: ChatSession, line: str, console: Console) -> bool:
    """Run a slash command; returns False when the user asked to quit."""
    name, _, args = line.partition(" ")
    args = args.strip()
    if name in ("/quit", "/exit"):
        return False
    if name == "/reset":
        session.reset()
        console.print("[dim]conversation cleared[/]")
    elif name == "/system":
        session.set_system(args or None)
        console.print(f"[dim]system prompt {'set' if args else 'cleared'}[/]")
    elif name == "/params":
        if args:
            session.set_params(**_parse_params(args))
        console.print(session.config.to_dict(), highlight=False)
    elif name == "/save":
        if not args:
            raise DGemmaError("/save needs a file name")
        session.save(args)
        console.print(f"[dim]saved {len(session.messages)} messages to {args}[/]")
    elif name == "/load":
        if not args:
            raise DGemmaError("/load needs a file name")
        session.load(args)
        console.print(f"[dim]loaded {len(session.messages)} messages[/]")
    else:
        console.print(f"[dim]{HELP}[/]")
    return True


def repl(session: ChatSession, console: Console, view_kind: str) -> None:
    readline = _readline()
    console.print(f"[dim]dgemma chat — {HELP}[/]")
    try:
        while True:
            try:
                line = input("you> ").strip()
            except EOFError:
                console.print()
                break
            except KeyboardInterrupt:
                console.print()
                continue
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not handle_command(session, line, console):
                        break
                    continue
                answer(session, line, console, view_kind)
            except DGemmaError as e:
                console.print(f"[bold red]error:[/] {e}", highlight=False)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(HISTORY)


def answer(session: ChatSession, text: str, console: Console, view_kind: str) -> None:
    """Stream one answer through the view; Ctrl-C abandons it and keeps the history as it was."""
    stream = session.stream(text)
    final = None
    view = make_view(view_kind, console, session.tokenizer, title="dgemma")
    try:
        with view:
            for event in stream:
                view.handle(event)
                if isinstance(event, FinishEvent):
                    final = event
    except KeyboardInterrupt:
        stream.close()
        console.print("[yellow]⏹ answer interrupted[/] (history kept)")
        return
    assert final is not None
    console.print(f"[bold cyan]dgemma>[/] {final.result.text.strip()}", highlight=False)
    if view_kind != "none":
        print_stats(console, final.result.stats)
