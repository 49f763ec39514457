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

import pytest
from tiny_chat_model import make_tiny_chat_model
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app
from dgemma_mlx.tokenizer import load_tokenizer

ANSI = re.compile(r"\x1b[\[\]]")
PROMPT_TOKENS = re.compile(r"prompt (\d+) tokens")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"))


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


# -- a real terminal -------------------------------------------------------------------------------
@pytest.fixture()
def tmux(tmp_path):
    assert shutil.which("tmux"), "tmux is required for the real-terminal chat test: apt-get install -y tmux"
    name = f"dgemma-chat-{os.getpid()}"
    socket = str(tmp_path / "tmux.sock")  # a private server: never touches the user's tmux

    def run(*args, check=True):
        return subprocess.run(["tmux", "-S", socket, *args], capture_output=True, text=True, check=check)

    yield name, run
    run("kill-server", check=False)


def test_chat_in_a_real_terminal_two_turns_then_ctrl_c(model_dir, tmp_path, tmux):
    name, tm = tmux
    saved = tmp_path / "chat.json"
    env = f"HOME={shlex.quote(str(tmp_path))} DGEMMA_MODEL={shlex.quote(str(model_dir))}"
    dgemma = f"{shlex.quote(sys.executable)} -c 'from dgemma_mlx.cli.app import main; main()'"
    tm(
        "new-session",
        "-d",
        "-s",
        name,
        "-x",
        "100",
        "-y",
        "40",
        f"{env} {dgemma} chat --seed 0; echo EXIT=$?; sleep 60",
    )

    def screen():
        return tm("capture-pane", "-p", "-t", name).stdout

    def wait_for(predicate, what, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; screen:\n{screen()}")

    def at_prompt(text):
        return text.rstrip().endswith("you>")

    def send(*keys):
        tm("send-keys", "-t", name, *keys)

    wait_for(lambda s: "dgemma chat" in s and at_prompt(s), "the banner and prompt")
    send("Hello there", "Enter")
    wait_for(lambda s: s.count("dgemma>") == 1 and at_prompt(s), "answer 1")
    send("How are you?", "Enter")
    wait_for(lambda s: s.count("dgemma>") == 2 and at_prompt(s), "answer 2")
    # a third answer that would run for minutes (no EOS, huge budget): interrupt it mid-generation
    send("/params max_tokens=100000 steps=48 eos_token_id=none stability_threshold=none", "Enter")
    wait_for(lambda s: "max_new_tokens = 100000" in s and at_prompt(s), "the new parameters")
    send("Tell me everything", "Enter")
    live = wait_for(lambda s: re.search(r"canvas \d+ · pass \d+/48", s), "the live view")
    assert "accepted" in live and "still noise" in live  # header and legend of the live canvas
    send("C-c")
    after = wait_for(lambda s: "answer interrupted" in s and at_prompt(s), "the interrupt")
    assert after.count("dgemma>") == 2  # no partial third answer shown as if complete
    send("Up")  # readline history: the interrupted question comes back
    wait_for(lambda s: s.rstrip().endswith("you> Tell me everything"), "history recall")
    send("C-u")
    send(f"/save {saved}", "Enter")
    wait_for(lambda s: "saved 4 messages" in s, "the save")
    messages = json.loads(saved.read_text())["messages"]
    assert [m["content"] for m in messages[::2]] == ["Hello there", "How are you?"]
    send("C-d")
    wait_for(lambda s: "EXIT=0" in s, "a clean exit on Ctrl-D", timeout=30)
    assert "Hello there" in (tmp_path / ".dgemma_history").read_text()
