"""`dgemma batch` across ranks under `mlx.launch -n 2 --backend ring` on 127.0.0.1 (#26): the rows
equal the single-process run's, a killed rank is one line on the other and `--resume` completes the
file exactly, a silent rank is lost within --rank-timeout, and ranks started differently refuse.

Every launch runs in its own session with a subprocess timeout, and on its own ports (other test
runs on this machine may be using mlx.launch's default ones)."""

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app

BIN = Path(sys.executable).parent
DGEMMA = str(BIN / "dgemma")


def launch_cmd(*argv: str) -> list[str]:
    port = random.randrange(20000, 60000, 4)
    ring = ["-n", "2", "--backend", "ring", "--starting-port", str(port)]
    return [str(BIN / "mlx.launch"), *ring, "--", *argv]


def run_launch(*argv: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run(launch_cmd(*argv), capture_output=True, text=True, timeout=timeout)


def single_process(tmp_path: Path, args: list[str]) -> list[str]:
    """The reference: the same job in one process; its lines, sorted (ranks write in arrival order)."""
    ref = tmp_path / "reference.jsonl"
    result = CliRunner().invoke(app, ["batch", *args, "-o", str(ref)])
    assert result.exit_code == 0, result.stderr
    return sorted(ref.read_text().splitlines())


def rank_exit_codes(output: str) -> dict[int, str]:
    """mlx.launch 0.32 exits 0 whatever its ranks do; it reports each failed rank in a warning, and two
    ranks ending together can share a line (its monitor threads write unsynchronised)."""
    found = re.findall(r"Node with rank (\d+) (exited with code -?\d+|was killed[^\n\x1b]*)", output)
    return {int(rank): status.strip() for rank, status in found}


def rank_pid(session: int, rank: int) -> int | None:
    """The pid of the dgemma process with MLX_RANK=rank in the launch's session."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) != session:
                continue
            env = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if f"MLX_RANK={rank}".encode() in env and b"dgemma" in cmdline and b"mlx.launch" not in cmdline:
            return int(entry.name)
    return None


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def lines_in(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """No EOS, no early stopping: each batch takes a few seconds, so a kill lands mid-run."""
    return word_chat_model(
        tmp_path_factory.mktemp("slow"),
        max_new_tokens=16,
        max_denoising_steps=48,
        eos_token_id=[],
        stability_threshold=None,
    )


def test_two_ranks_write_the_rows_one_process_writes(model_dir, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"prompt number {i}\n" for i in range(5)))  # 3 batches, the last short
    args = [str(src), "-m", str(model_dir), "-b", "2", "--seed", "7"]
    expected = single_process(tmp_path, args)
    done = run_launch(DGEMMA, "batch", *args, "-o", str(out))
    assert rank_exit_codes(done.stdout + done.stderr) == {}, done.stderr
    assert sorted(out.read_text().splitlines()) == expected  # text, tokens, passes: byte for byte
    assert "5 written" in done.stderr and "2 ranks" in done.stderr
    assert done.stderr.count("written to") == 1  # rank 0 speaks for the job


def test_a_killed_rank_stops_the_other_and_resume_completes_the_file(slow_model, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"prompt number {i}\n" for i in range(8)))  # 4 batches: 2 per rank
    args = [str(src), "-m", str(slow_model), "-b", "2", "--seed", "0"]
    log = tmp_path / "launch.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            launch_cmd(DGEMMA, "batch", *args, "-o", str(out)),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for(lambda: lines_in(out) >= 1, 120), log.read_text()
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=60)
        stopped_in = time.monotonic() - killed_at
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    ours = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "rank 1 (127.0.0.1:" in ours[0], text
    assert rank_exit_codes(text)[0] == "exited with code 3", text
    assert stopped_in < 60
    partial = lines_in(out)
    assert 1 <= partial < 8, "the kill should land mid-file"

    resumed = run_launch(DGEMMA, "batch", *args, "-o", str(out), "--resume")
    assert rank_exit_codes(resumed.stdout + resumed.stderr) == {}, resumed.stderr
    assert f"{partial} already there" in resumed.stderr
    assert sorted(out.read_text().splitlines()) == single_process(tmp_path, args)


def test_a_silent_rank_is_lost_within_the_rank_timeout(model_dir, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"prompt number {i}\n" for i in range(400)))
    log = tmp_path / "launch.log"
    argv = [DGEMMA, "batch", str(src), "-m", str(model_dir), "-o", str(out), "--rank-timeout", "3"]
    with log.open("w") as sink:
        proc = subprocess.Popen(
            launch_cmd(*argv), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    victim = None
    try:
        assert wait_for(lambda: lines_in(out) >= 1, 120), log.read_text()
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGSTOP)  # alive, sockets open, never answering: a Mac that went to sleep
        assert wait_for(lambda: "stopped responding" in log.read_text(), 30), log.read_text()
        assert wait_for(lambda: "Node with rank 0" in log.read_text(), 10), log.read_text()
    finally:
        if victim is not None:
            os.kill(victim, signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    ours = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, text
    assert "rank 1 (127.0.0.1:" in ours[0] and "waited 3 s" in ours[0]
    assert rank_exit_codes(text)[0] == "exited with code 3"
    assert all(json.loads(line)["id"] for line in out.read_text().splitlines())  # whole rows only


def test_ranks_started_with_other_model_files_or_settings_refuse_at_start(tmp_path):
    word_chat_model(tmp_path / "m0")
    word_chat_model(tmp_path / "m1", max_new_tokens=8)  # same weights, another generation config
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("hello\n")
    # rank r loads m<r> with batch size r + 1
    script = f"exec {DGEMMA} batch {src} -o {out} -m {tmp_path}/m$MLX_RANK -b $((MLX_RANK + 1))"
    done = run_launch("bash", "-c", script, timeout=60)
    text = done.stdout + done.stderr
    ours = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(ours) == 2, text  # one line per rank
    assert all("rank 1 (127.0.0.1:" in line for line in ours), text
    # rank 0 names what differs; rank 1 says the same, or (when mlx.launch ended it first) that it was stopped
    assert any("other model files and settings than rank 0" in line for line in ours), text
    codes = rank_exit_codes(text)
    assert codes[0] == "exited with code 1" and codes[1].startswith(("exited with code", "was killed"))
    assert codes[1] != "exited with code 0"
    assert "loading" not in text and not out.exists()  # refused before any model load or write
