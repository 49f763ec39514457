"""Pipeline mode under `mlx.launch -n 2 --backend ring` on 127.0.0.1 (dgemma_mlx/pipeline.py).

One launch of tests/pipeline_worker.py (start-up is most of the cost) runs, on each rank,
`dgemma generate --pipeline`, a two-turn `dgemma chat --pipeline`, `dgemma batch --pipeline`, and
the library directly
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
from pipeline_worker import (
    BATCH_ARGS,
    CHAT_ARGS,
    CHAT_SCRIPT,
    GENERATE_ARGS,
    PROMPTS,
    TURNS,
    serve_jobs,
    serve_specs,
)
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


BATCH_INPUT = "hello there\nhow are you\nwhat is the moon\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline")
    (path / "in.txt").write_text(BATCH_INPUT)
    return path


@pytest.fixture(scope="module")
def worker_reports(model_dir, work):
    out, _ = launch([sys.executable, str(WORKER), str(model_dir), str(work)])
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
    top_k = generate(model, tokenizer, PROMPTS, seed=3, max_new_tokens=24, self_conditioning_top_k=8)
    for report in worker_reports.values():
        assert report["generate"] == expected
        assert report["generate_top_k"] == top_k.new_tokens  # fast decoding's top-k self-conditioning
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


def test_batch_command_with_pipeline_writes_the_rows_of_one_process(worker_reports, model_dir, work):
    root, follower = worker_reports[0]["cli"]["batch"], worker_reports[1]["cli"]["batch"]
    assert root["code"] == follower["code"] == 0, (root, follower)
    assert follower["stdout"] == follower["stderr"] == ""
    argv = ["batch", str(work / "in.txt"), "-o", str(work / "alone.jsonl"), "-m", str(model_dir), *BATCH_ARGS]
    alone = CliRunner().invoke(app, argv)
    assert alone.exit_code == 0, alone.output

    def rows(name: str) -> list[dict]:
        lines = (work / name).read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_second"} for line in lines]

    assert rows("pipelined.jsonl") == rows("alone.jsonl") and len(rows("alone.jsonl")) == 3


def test_pipelined_server_follows_rank_zero_and_answers_as_one_process(worker_reports, loaded):
    """The scheduler of `dgemma serve --pipeline`: rank 0 takes the requests (and one client leaving
    at once), the other rank follows; every choice's tokens equal one process's server."""
    from dgemma_mlx.api import resolve_config
    from dgemma_mlx.server.scheduler import Scheduler

    model, tokenizer = loaded
    scheduler = Scheduler(model, resolve_config(model, tokenizer), max_batch=4)
    alone = serve_jobs(scheduler, serve_specs(model, tokenizer))
    assert worker_reports[0]["served"] == alone
    assert [len(job) for job in alone] == [2, 1, 2]


# -- the plan: no launch needed ---------------------------------------------------------------------
def test_layer_split_is_contiguous_and_even():
    from dgemma_mlx.errors import DGemmaError

    assert [list(r) for r in layer_split(30, 4)] == [
        list(range(0, 8)), list(range(8, 16)), list(range(16, 23)), list(range(23, 30))
    ]  # fmt: skip
    with pytest.raises(DGemmaError, match="need 4 layers or more"):
        layer_split(3, 4)


def test_info_pipeline_shows_each_share_and_they_add_up(model_dir):
    from dgemma_mlx.config import ModelConfig
    from dgemma_mlx.inspect import summarize
    from dgemma_mlx.memory import CONTEXT_FOR_ESTIMATE, working_bytes
    from dgemma_mlx.pipeline_plan import model_shares

    result = CliRunner().invoke(app, ["info", "-m", str(model_dir), "--pipeline", "2", "--json"])
    assert result.exit_code == 0, result.output
    shares = json.loads(result.stdout)["pipeline"]
    assert [s["layers"] for s in shares] == [[0, 1], [2]]
    whole = summarize(model_dir)["estimated_memory_bytes"]
    one = model_shares(model_dir, 1, CONTEXT_FOR_ESTIMATE)[0]
    assert one.memory_bytes == whole  # one rank is the whole model, as `dgemma info` counts it
    assert one.working_bytes == working_bytes(ModelConfig.from_file(model_dir / "config.json"))
    shared = sum(s["weight_bytes"] for s in shares) - one.weight_bytes  # counted on both ranks
    assert 0 < shared < min(s["weight_bytes"] for s in shares)
    text = CliRunner().invoke(app, ["info", "-m", str(model_dir), "--pipeline", "2"]).stdout
    assert "rank 0      layers 0-1" in text and "rank 1      layer 2" in text


def test_the_memory_guard_checks_one_rank_share(model_dir, monkeypatch):
    from dgemma_mlx import memory
    from dgemma_mlx.errors import DGemmaError
    from dgemma_mlx.pipeline_plan import check_share_fits, model_shares

    shares = model_shares(model_dir, 2, memory.CONTEXT_FOR_ESTIMATE)
    whole = model_shares(model_dir, 1, memory.CONTEXT_FOR_ESTIMATE)[0]
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: max(s.memory_bytes for s in shares))
    for share in shares:
        check_share_fits(model_dir, share, 2)  # each rank fits where the whole model would not
    with pytest.raises(DGemmaError, match="needs"):
        check_share_fits(model_dir, whole, 1)
    check_share_fits(model_dir, whole, 1, force=True)


def test_pipeline_outside_mlx_launch_is_one_line_before_loading(model_dir, monkeypatch):
    for var in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MLX_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for argv in (["generate", "-p", "hi"], ["chat"], ["serve"], ["batch", "in.txt", "-o", "out.jsonl"]):
        result = CliRunner().invoke(app, [*argv, "-m", str(model_dir), "--pipeline"])
        assert result.exit_code == 1, (argv, result.output)
        assert "lone process" in result.stderr and "loading" not in result.stderr
    monkeypatch.setenv("MLX_RANK", "0")  # launched: a piped prompt would never end under mlx.launch
    result = CliRunner().invoke(app, ["generate", "-p", "-", "-m", str(model_dir), "--pipeline"], input="hi")
    words = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "give the prompt as -p TEXT (mlx.launch never closes stdin)" in words
