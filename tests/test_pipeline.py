"""Pipeline mode under `mlx.launch -n 2 --backend ring` on 127.0.0.1 (dgemma_mlx/pipeline.py).

One launch of tests/pipeline_worker.py (start-up is most of the cost) runs, on each rank,
`dgemma generate --pipeline`, a two-turn `dgemma chat --pipeline`, and the library directly
(parameters per rank, a two-row generation, a two-turn chat). Each is compared with the same run in
this process on the whole model: the tokens must be identical.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlx.utils import tree_flatten
from pipeline_worker import CHAT_ARGS, CHAT_SCRIPT, GENERATE_ARGS, PROMPTS, TURNS
from typer.testing import CliRunner

from dgemma_mlx import generate
from dgemma_mlx.cli.app import app
from dgemma_mlx.pipeline_plan import layer_split
from dgemma_mlx.session import ChatSession

TIMEOUT = 240  # seconds per launch: a wedged pipeline fails the test instead of hanging it
WORKER = Path(__file__).with_name("pipeline_worker.py")


def free_ports(count: int = 2) -> int:
    """A base port with `count` free ports after it (the ring backend takes one per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for p in range(base, base + count):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def launch(command: list[str]) -> tuple[str, str]:
    """stdout and stderr of `mlx.launch -n 2 --backend ring -- command` on free local ports. A launch
    that outlives TIMEOUT is killed with its ranks (its own process group) and fails the test.
    mlx.launch exits 0 whatever its ranks did: a failed rank shows as a warning line, checked here."""
    mlx_launch = Path(sys.executable).with_name("mlx.launch")
    port = str(free_ports())
    argv = [str(mlx_launch), "-n", "2", "--backend", "ring", "--starting-port", port, "--", *command]
    path = os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])
    # stdin: a pipe held open and silent (at EOF mlx.launch's stdin loop would spin a core)
    quiet_in, held_open = os.pipe()
    proc = subprocess.Popen(
        argv,
        stdin=quiet_in,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"pipeline launch timed out: {shlex.join(argv)}\n{err[-2000:]}")
    finally:
        os.close(quiet_in)
        os.close(held_open)
    assert "exited with code" not in err and "was killed" not in err, err[-3000:]
    return out, err


@pytest.fixture(scope="module")
def worker_reports(model_dir):
    out, _ = launch([sys.executable, str(WORKER), str(model_dir)])
    reports = {}
    for line in out.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            reports[report["rank"]] = report
    assert sorted(reports) == [0, 1], out
    return reports


def test_each_rank_loads_only_its_layers(worker_reports, loaded):
    model, _ = loaded
    params = dict(tree_flatten(model.parameters()))
    total = sum(v.size for v in params.values())
    per_layer = [
        sum(v.size for k, v in params.items() if k.startswith(f"model.decoder.layers.{i}."))
        for i in range(len(model.layers))
    ]
    split = layer_split(len(model.layers), 2)
    assert [list(r) for r in split] == [[0, 1], [2]]
    for rank, report in worker_reports.items():
        assert report["layers"] == list(split[rank])
        dropped = sum(n for i, n in enumerate(per_layer) if i not in split[rank])
        assert report["params"] == total - dropped
        assert report["params"] < total


def test_pipelined_generation_is_token_exact(worker_reports, loaded):
    model, tokenizer = loaded
    expected = generate(model, tokenizer, PROMPTS, seed=3, max_new_tokens=24).new_tokens
    for report in worker_reports.values():
        assert report["generate"] == expected
    # what crossed the wire was activations, never [B, L, V] logits
    assert 0 < worker_reports[0]["bytes_sent_generate"]


def test_pipelined_chat_follows_rank_zero_token_exact(worker_reports, loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer, seed=5)
    expected = []
    for text in TURNS:
        *_, last = session.stream(text)
        expected.append(last.result.new_tokens[0])
    assert worker_reports[0]["chat"] == expected
    assert worker_reports[0]["history"] == worker_reports[1]["history"] == session.messages


def test_generate_command_with_pipeline_matches_one_process(worker_reports, model_dir):
    alone = CliRunner().invoke(app, ["generate", "-m", str(model_dir), *GENERATE_ARGS])
    assert alone.exit_code == 0, alone.output
    root, follower = worker_reports[0]["cli"]["generate"], worker_reports[1]["cli"]["generate"]
    assert root["code"] == follower["code"] == 0, (root, follower)
    assert json.loads(root["stdout"])["tokens"] == json.loads(alone.stdout)["tokens"]
    assert follower["stdout"] == follower["stderr"] == ""  # only rank 0 speaks


def test_chat_command_with_pipeline_matches_one_process(worker_reports, model_dir):
    alone = CliRunner().invoke(app, ["chat", "-m", str(model_dir), *CHAT_ARGS], input=CHAT_SCRIPT)
    assert alone.exit_code == 0, alone.output
    root, follower = worker_reports[0]["cli"]["chat"], worker_reports[1]["cli"]["chat"]
    assert root["code"] == follower["code"] == 0, (root, follower)
    assert root["stdout"] == alone.stdout and len(alone.stdout.strip().splitlines()) == 2
    assert follower["stdout"] == follower["stderr"] == ""
