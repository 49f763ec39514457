"""`dgemma chat`: scripted through Typer's test runner, and typed into a real terminal (tmux).

The tmux test needs the `tmux` binary and fails (never skips) without it; CI installs it
(`apt-get install -y tmux`, see .ci/run).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import mlx.core as mx
import pytest
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx import load
from dgemma_mlx.cli.app import app
from dgemma_mlx.session import ChatSession
from dgemma_mlx.tokenizer import load_tokenizer

ANSI = re.compile(r"\x1b[\[\]]")
PROMPT_TOKENS = re.compile(r"prompt (\d+) tokens")


def chat(model_dir, script, *args):
    return CliRunner().invoke(app, ["chat", "-m", str(model_dir), "--seed", "0", *args], input=script)


def test_scripted_chat_keeps_one_session_and_encodes_only_new_turns(model_dir, tmp_path):
    saved = tmp_path / "conversation.json"
    script = f"Hello there\n/params max_tokens=8 steps=4\nHow are you?\n/save {saved}\n/quit\nnever read\n"
    result = chat(model_dir, script)
    assert result.exit_code == 0, result.output
    answers = result.stdout.splitlines()
    assert len(answers) == 2  # one line per answer; no prompts or banners on stdout when piped
    assert not ANSI.search(result.stdout + result.stderr)
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[::2]] == ["Hello there", "How are you?"]
    first, second = (int(n) for n in PROMPT_TOKENS.findall(result.stderr))
    # turn 1: <bos> <|turn> user hello there <turn|> <|turn> model
    assert first == 8
    # turn 2 encodes only what the cache has not seen: answer 1, then
    # <turn|> <|turn> user how are you ? <turn|> <|turn> model
    answer = load_tokenizer(model_dir).encode(messages[1]["content"], add_special_tokens=False)
    assert second == len(answer) + 10
    assert "max_denoising_steps = 4" in result.stderr


def test_load_continues_a_saved_conversation_and_errors_do_not_end_the_session(model_dir, tmp_path):
    saved = tmp_path / "c.json"
    assert chat(model_dir, f"Hello there\n/save {saved}\n").exit_code == 0
    missing = tmp_path / "missing.json"
    script = f"/bogus\n/params steps=zero\n/load {missing}\n/system be good\nTell me\n/save {saved}\n"
    result = chat(model_dir, script, "--load", str(saved))
    assert result.exit_code == 0, result.output
    assert "unknown command /bogus" in result.stderr and "not a number" in result.stderr
    assert "no such session file" in result.stderr and "Traceback" not in result.output
    data = json.loads(saved.read_text())
    assert data["system"] == "be good" and len(data["messages"]) == 4


def test_chat_options_and_thinking(model_dir, tmp_path):
    saved = tmp_path / "t.json"
    result = chat(model_dir, f"/params\n/think off\n/think\nHi\n/save {saved}\n", "--think", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert "max_denoising_steps = 2" in result.stderr and "thinking off" in result.stderr
    assert json.loads(saved.read_text())["enable_thinking"] is True


def test_memory_stays_flat_over_many_turns(tmp_path):
    """The `dgemma chat` path over 30 turns: what MLX holds after turn k of a conversation is the same
    in the tenth conversation as in the first (a leak would grow it; benchmarks/long_session.py
    reports the timings)."""
    # fixed work per turn: no EOS, no early stopping
    fixed = word_chat_model(tmp_path / "fixed", eos_token_id=[], stability_threshold=None)
    model, tokenizer = load(fixed)
    session = ChatSession(model, tokenizer, seed=0)
    held = []
    for turn in range(30):
        if turn % 3 == 0:
            session.reset()
        session.ask(f"question {turn} tell me a story")
        held.append(mx.get_active_memory() + mx.get_cache_memory())
    for k in range(3):
        same_turn = held[k::3]
        assert max(same_turn) <= 1.1 * same_turn[0], held


# -- a real terminal ---------------------------------------------------------------------------------
DGEMMA_SHELL = f"{shlex.quote(sys.executable)} -c 'from dgemma_mlx.cli.app import main; main()'"


class Tmux:
    """One command in a detached tmux window on a private server: type keys, read the screen."""

    def __init__(self, tmp_path):
        assert shutil.which("tmux"), "tmux is required for the real-terminal tests: apt-get install -y tmux"
        self.socket = str(tmp_path / "tmux.sock")  # never touches the user's own tmux server
        self.name = f"dgemma-{os.getpid()}"

    def tmux(self, *args, check=True):
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, check=check)

    def start(self, command, width=100, height=40):
        # the shell reports the exit status and keeps the window open for a last look
        shell = f"{command}; echo EXIT=$?; sleep 60"
        self.tmux("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), shell)

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", self.name).stdout

    def send(self, *keys):
        self.tmux("send-keys", "-t", self.name, *keys)

    def wait_for(self, predicate, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{self.screen()}")

    def close(self):
        self.tmux("kill-server", check=False)


@pytest.fixture()
def term(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.close()


def at_prompt(text):
    return text.rstrip().endswith("you>")


def two_turns(term, model_dir, tmp_path, after: str = "") -> None:
    """Start `dgemma chat` in the terminal (then the shell command `after`) and answer two turns."""
    env = f"HOME={shlex.quote(str(tmp_path))} DGEMMA_MODEL={shlex.quote(str(model_dir))}"
    term.start(f"{env} {DGEMMA_SHELL} chat --seed 0{after}")
    term.wait_for(lambda s: "dgemma chat" in s and at_prompt(s), "the banner and prompt")
    term.send("Hello there", "Enter")
    term.wait_for(lambda s: s.count("dgemma>") == 1 and at_prompt(s), "answer 1")
    term.send("How are you?", "Enter")
    term.wait_for(lambda s: s.count("dgemma>") == 2 and at_prompt(s), "answer 2")


def test_chat_in_a_real_terminal_two_turns_then_ctrl_c(model_dir, tmp_path, term):
    saved = tmp_path / "chat.json"
    two_turns(term, model_dir, tmp_path)
    # a third answer that would run for minutes (no EOS, huge budget): interrupt it mid-generation
    term.send("/params max_tokens=100000 steps=48 eos_token_id=none stability_threshold=none", "Enter")
    term.wait_for(lambda s: "max_new_tokens = 100000" in s and at_prompt(s), "the new parameters")
    term.send("Tell me everything", "Enter")
    live = term.wait_for(lambda s: re.search(r"canvas \d+ · pass \d+/48", s), "the live view")
    assert "accepted" in live and "still noise" in live  # header and legend of the live canvas
    term.send("C-c")
    after = term.wait_for(lambda s: "answer interrupted" in s and at_prompt(s), "the interrupt")
    assert after.count("dgemma>") == 2  # no partial third answer shown as if complete
    assert not re.search(r"pass \d+/48", after) and "still noise" not in after  # the view cleared itself
    term.send("Up")  # readline history: the interrupted question comes back
    term.wait_for(lambda s: s.rstrip().endswith("you> Tell me everything"), "history recall")
    term.send("C-u")
    term.send(f"/save {saved}", "Enter")
    # Ctrl-C after a canvas was committed keeps the question and the committed part of the answer (#22)
    kept = "committed tokens in the history" in after
    term.wait_for(lambda s: f"saved {6 if kept else 4} messages" in s, "the save")
    messages = json.loads(saved.read_text())["messages"]
    asked = ["Hello there", "How are you?"] + (["Tell me everything"] if kept else [])
    assert [m["content"] for m in messages[::2]] == asked
    term.send("C-d")
    term.wait_for(lambda s: "EXIT=0" in s, "a clean exit on Ctrl-D", timeout=30)
    assert "Hello there" in (tmp_path / ".dgemma_history").read_text()


def test_generate_in_a_real_terminal_with_stdout_redirected(model_dir, tmp_path, term):
    """`dgemma generate -p ... > out.txt`: the view and stats on the terminal, only the answer in the file.

    Seeded: the tiny model answers some unseeded draws with an immediate <eos>, an empty answer."""
    out = tmp_path / "out.txt"
    command = f"{DGEMMA_SHELL} generate -m {shlex.quote(str(model_dir))} -p 'Tell me a story' --seed 1"
    command += f" > {out}"
    term.start(command, 60)
    screen = term.wait_for(lambda s: "EXIT=" in s, "the end of the run")
    assert "EXIT=0" in screen and "tokens/forward" in screen and "peak memory" in screen
    answer = out.read_text()
    assert answer.strip() and answer.count("\n") == 1 and "\x1b" not in answer


# -- Ctrl-C keeps the committed part; typing does not echo into the live view (#22) --------------------
def test_echo_off_restores_the_terminal_even_on_ctrl_c():
    import termios

    from dgemma_mlx.cli.chat import echo_off

    master, slave = os.openpty()
    try:
        with os.fdopen(slave, "r", closefd=False) as tty:
            before = termios.tcgetattr(slave)
            assert before[3] & termios.ECHO
            with echo_off(tty):
                assert not termios.tcgetattr(slave)[3] & termios.ECHO
                assert termios.tcgetattr(slave)[3] & termios.ISIG  # Ctrl-C still interrupts
            assert termios.tcgetattr(slave) == before
            with pytest.raises(KeyboardInterrupt), echo_off(tty):
                raise KeyboardInterrupt
            assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)
    with echo_off(None), echo_off(sys.stdin if not sys.stdin.isatty() else None):
        pass  # off a terminal: nothing to do, nothing raised


def test_ctrl_c_after_a_canvas_keeps_the_committed_tokens(model_dir, monkeypatch):
    from io import StringIO

    from rich.console import Console

    from dgemma_mlx.cli.chat import ChatRepl
    from dgemma_mlx.events import CanvasEvent

    model, tokenizer = load(model_dir)
    session = ChatSession(model, tokenizer, seed=0)
    session.config = session.config.replace_explicit(eos_token_id=None, stability_threshold=None)
    session.set_params(max_new_tokens=4 * model.canvas_length)
    real_stream = session.stream
    seen: list[list[int]] = []

    def interrupted_after_first_canvas(text):
        for event in real_stream(text):
            yield event
            if isinstance(event, CanvasEvent):
                seen.append(event.tokens[0].tolist())
                raise KeyboardInterrupt

    monkeypatch.setattr(session, "stream", interrupted_after_first_canvas)
    out, err = StringIO(), StringIO()
    repl = ChatRepl(session, Console(file=out), Console(file=err), "plain", interactive=False)
    repl.answer("Tell me a story")
    assert len(seen) == 1
    kept = re.search(r"answer interrupted: kept the (\d+) committed tokens", err.getvalue())
    assert kept, err.getvalue()
    assert int(kept.group(1)) == len(seen[0]) - sum(t == tokenizer.pad_token_id for t in seen[0])
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert session.messages[0]["content"] == "Tell me a story" and session.messages[1]["content"]
    assert out.getvalue() == ""  # nothing shown as if it were a complete answer
    monkeypatch.setattr(session, "stream", real_stream)
    session.set_params(max_new_tokens=model.canvas_length)
    repl.answer("Go on")  # the session goes on from the kept history
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * 2


NEVER = 98  # `<|think|>` as the only EOS: this seeded conversation does not write it (checked)


def test_typing_during_an_answer_does_not_reach_the_live_view(model_dir, tmp_path, term):
    stty = "stty -a | tr ' ;' '\\n\\n' | grep -x -- '-*echo'"
    two_turns(term, model_dir, tmp_path, after=f"; {stty}")
    # an answer that runs for minutes: a huge budget, 48 passes a canvas, and an EOS id it never writes
    term.send(f"/params max_tokens=100000 steps=48 eos_token_id={NEVER} stability_threshold=none", "Enter")
    term.wait_for(lambda s: "max_new_tokens = 100000" in s and at_prompt(s), "the new parameters")
    term.send("Tell me everything", "Enter")
    term.wait_for(lambda s: re.search(r"canvas \d+ · pass \d+/48", s), "the live view")
    for _ in range(3):  # typed while the answer streams, Enter included: echoed, each moves the cursor
        term.send("-l", "zqzqzq")
        term.send("Enter")
        time.sleep(0.3)
    during = term.screen()
    assert during.count("dgemma>") == 2, during  # the third answer is still streaming
    assert "zqzqzq" not in during, during
    assert len(re.findall(r"canvas \d+ · pass \d+/48", during)) == 1, during  # no stale frames left
    assert during.count("still noise") == 1, during
    term.send("C-c")
    after = term.wait_for(lambda s: "answer interrupted" in s and at_prompt(s), "the interrupt")
    time.sleep(0.5)
    after = term.screen()
    assert at_prompt(after) and "zqzqzq" not in after  # what was typed unseen is not sent
    assert after.count("dgemma>") == 2
    term.send("C-u")
    term.send("C-d")
    end = term.wait_for(lambda s: "EXIT=" in s, "the end of the run", timeout=30)
    assert re.search(r"^echo$", end, re.M), end  # echo is back on after the chat
