"""`dgemma batch` (resume after a kill, malformed lines) and `dgemma chat` in a real terminal (tmux)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app

DGEMMA = [sys.executable, "-c", "from dgemma_mlx.cli.app import main; main()"]


def write_jsonl(path, rows, extra=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra))


def ids_in(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_batch_reports_malformed_lines_and_writes_the_rest(chat_model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl(
        src,
        [{"id": 1, "prompt": "Hello"}, {"id": 2, "messages": [{"role": "user", "content": "Hi"}]}],
        extra=[
            "{broken\n",
            json.dumps({"id": 3}) + "\n",
            json.dumps({"id": 4, "prompt": "x", "t_min": 5}) + "\n",
        ],
    )
    result = CliRunner().invoke(
        app, ["batch", str(src), "-o", str(out), "-m", str(chat_model_dir), "--seed", "0"]
    )
    assert result.exit_code == 1  # some lines were malformed
    assert sorted(ids_in(out)) == ["1", "2"]
    errors = (tmp_path / "out.jsonl.errors").read_text()
    assert (
        "line 3: not valid JSON" in errors
        and "line 4: needs exactly one of" in errors
        and "line 5:" in errors
    )
    assert "skipped line 3" in result.stderr
    rerun = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "-m", str(chat_model_dir)])
    assert rerun.exit_code == 1 and "--resume" in rerun.stderr  # never silently appends to an existing file


def test_batch_resume_after_kill_gives_every_id_exactly_once(chat_model_dir, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"prompt number {i}\n" for i in range(12)))
    cmd = [
        *DGEMMA,
        "batch",
        str(src),
        "-o",
        str(out),
        "-m",
        str(chat_model_dir),
        "--batch-size",
        "1",
        "--seed",
        "0",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(ids_in(out)) < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ids_in(out)
    assert 2 <= len(partial) < 12, "the kill should land mid-file"
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final = ids_in(out)
    assert sorted(final, key=int) == [str(i) for i in range(1, 13)]  # plain text: id = line number


@pytest.fixture()
def tmux():
    assert shutil.which("tmux"), "tmux is required for the real-terminal chat test (apt-get install tmux)"
    name = f"dgemma-test-{os.getpid()}"
    yield name
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def screen(session):
    return subprocess.run(
        ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
    ).stdout


def wait_for(session, predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = screen(session)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out; screen was:\n{screen(session)}")


def send(session, *keys):
    subprocess.run(["tmux", "send-keys", "-t", session, *keys], check=True)


def test_chat_in_a_real_terminal_two_turns_then_ctrl_c(chat_model_dir, tmp_path, tmux):
    saved = tmp_path / "chat.json"
    env = {**os.environ, "HOME": str(tmp_path)}
    command = " ".join([*(f"'{c}'" for c in DGEMMA), "chat", "-m", str(chat_model_dir), "--seed", "0"])
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", tmux, "-x", "120", "-y", "40", command], check=True, env=env
    )
    wait_for(tmux, lambda s: "you>" in s)
    send(tmux, "Hello there", "Enter")
    wait_for(tmux, lambda s: s.count("dgemma>") >= 1 and s.rstrip().endswith("you>"))
    send(tmux, "How are you?", "Enter")
    wait_for(tmux, lambda s: s.count("dgemma>") >= 2 and s.rstrip().endswith("you>"))
    # a third, long answer: interrupt it mid-generation
    send(tmux, "/params max_new_tokens=4000 max_denoising_steps=48 stability_threshold=None", "Enter")
    wait_for(tmux, lambda s: "max_new_tokens" in s and s.rstrip().endswith("you>"))
    send(tmux, "Tell me everything", "Enter")
    wait_for(tmux, lambda s: "pass " in s or "canvas " in s)  # the live view is drawing
    send(tmux, "C-c")
    wait_for(tmux, lambda s: "answer interrupted" in s and s.rstrip().endswith("you>"))
    send(tmux, f"/save {saved}", "Enter")
    wait_for(tmux, lambda s: "saved" in s)
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in messages[::2]] == ["Hello there", "How are you?"]
    send(tmux, "C-d")
    deadline = time.time() + 30
    while time.time() < deadline and subprocess.run(["tmux", "has-session", "-t", tmux]).returncode == 0:
        time.sleep(0.2)
    assert subprocess.run(["tmux", "has-session", "-t", tmux], capture_output=True).returncode != 0
