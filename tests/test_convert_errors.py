"""`dgemma convert` failure modes: one line naming the problem, exit 1, and never an OUT left behind.

Includes the hard case: the process SIGKILLed mid-write leaves only a clearly partial staging
directory (no OUT), and the next run clears it and succeeds.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_convert import cli, write_hf_checkpoint

from dgemma_mlx.convert import output as output_module
from dgemma_mlx.convert import stream as stream_module
from dgemma_mlx.errors import DGemmaError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "sharded": write_hf_checkpoint(root / "sharded", "float32", max_shard_size="200KB"),
        "single": write_hf_checkpoint(root / "single", "bfloat16"),
    }


@pytest.fixture
def source(pristine, tmp_path):
    """A private copy of a tiny checkpoint that the test may break."""

    def copy(kind: str = "sharded") -> Path:
        return Path(shutil.copytree(pristine[kind], tmp_path / f"src-{kind}"))

    return copy


def assert_clean_failure(result, out: Path, *needles: str) -> str:
    """Exit 1, one error line (last on stderr) with every needle, no traceback, no OUT or staging dir."""
    stderr = result.stderr.strip()
    assert result.exit_code == 1, (result.exit_code, result.output, stderr)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and stderr.endswith(errors[0]), stderr
    message = errors[0]
    for needle in needles:
        assert needle in message, message
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), list(out.parent.iterdir())
    return message


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_missing_shard(source, tmp_path):
    src = source("sharded")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    out = tmp_path / "out"
    assert_clean_failure(cli(str(src), "-o", str(out)), out, shard.name, "missing shard")


def test_truncated_safetensors(source, tmp_path):
    src = source("single")
    weights = src / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size - 1000)
    out = tmp_path / "out"
    assert_clean_failure(cli(str(src), "-o", str(out)), out, "model.safetensors", "truncated")


def test_config_without_text_config(source, tmp_path):
    src = source()
    edit_config(src, text_config=None)
    out = tmp_path / "out"
    assert_clean_failure(cli(str(src), "-o", str(out)), out, "config.json", "text_config")


def test_unknown_model_type(source, tmp_path):
    src = source()
    edit_config(src, model_type="llama")
    out = tmp_path / "out"
    assert_clean_failure(cli(str(src), "-o", str(out)), out, "unsupported model_type 'llama'")


def test_source_missing_a_tensor_or_with_a_wrong_shape(source, tmp_path):
    from safetensors.torch import load_file, save_file  # numpy cannot hold the bf16 tensors

    src = source("single")
    weights = src / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.decoder.layers.1.router.proj.weight"]
    save_file(tensors, weights)
    out = tmp_path / "out"
    assert_clean_failure(cli(str(src), "-o", str(out)), out, "missing tensor", "layers.1.router.proj.weight")

    wrong = tensors["model.decoder.layers.1.mlp.up_proj.weight"].clone()
    tensors["model.decoder.layers.1.router.proj.weight"] = wrong
    save_file(tensors, weights)
    assert_clean_failure(cli(str(src), "-o", str(out)), out, "router.proj.weight has shape", "model expects")


def test_already_quantized_source_is_refused(source, tmp_path):
    converted = tmp_path / "converted"
    assert cli(str(source()), "-o", str(converted)).exit_code == 0
    out = tmp_path / "out"
    assert_clean_failure(cli(str(converted), "-o", str(out)), out, "already quantized")


def test_hub_id_without_network_says_how_to_pass_a_local_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    msg = assert_clean_failure(
        cli("someone/not-a-cached-model", "-o", str(out)), out, "someone/not-a-cached-model"
    )
    assert "local directory" in msg and "dgemma convert DIR" in msg
    assert_clean_failure(cli(str(tmp_path / "nope"), "-o", str(out)), out, "no such model directory")


@pytest.mark.parametrize(
    "flags,needle",
    [
        (("--bits", "7"), "unsupported --bits 7"),
        (("--group-size", "48"), "unsupported --group-size 48"),
        (("--mode", "int4"), "unknown --mode 'int4'"),
        (("--mode", "mxfp4", "--bits", "8"), "--mode mxfp4 always uses 4 bits"),
        (("--recipe", "fancy"), "unknown --recipe 'fancy'"),
        (("--dtype", "int8"), "unknown --dtype 'int8'"),
    ],
)
def test_bad_options(pristine, tmp_path, flags, needle):
    out = tmp_path / "out"
    assert_clean_failure(cli(str(pristine["sharded"]), "-o", str(out), *flags), out, needle)


def test_bad_destinations(pristine, tmp_path):
    src = pristine["sharded"]
    out = tmp_path / "missing-parent" / "out"
    assert_clean_failure(cli(str(src), "-o", str(out)), out, "no such directory")
    result = cli(str(src), "-o", str(src), "--force")
    assert result.exit_code == 1 and "must not be the source" in result.stderr
    assert (src / "config.json").exists()

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = cli(str(src), "-o", str(precious), "--force")
    assert result.exit_code == 1 and "not a model directory" in result.stderr
    assert (precious / "notes.txt").read_text() == "keep me"

    out = tmp_path / "out"
    busy = tmp_path / ".out.partial"
    busy.mkdir()
    (busy / output_module.MARKER).write_text(f"{os.getppid()}\n")  # a live process that is not us
    result = cli(str(src), "-o", str(out))
    assert result.exit_code == 1 and "another conversion" in result.stderr and not out.exists()
    assert busy.exists()  # someone else's work is left alone


def test_not_enough_disk_is_refused_before_starting(pristine, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(output_module.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5000, 5000))
    out = tmp_path / "out"
    assert_clean_failure(
        cli(str(pristine["sharded"]), "-o", str(out)), out, "not enough free disk", "needs", "free"
    )


def test_failures_mid_conversion_leave_nothing(pristine, tmp_path, monkeypatch):
    real = stream_module.convert_unit
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise calls["error"]
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_module, "convert_unit", failing)
    out = tmp_path / "out"
    calls["error"] = OSError(28, "No space left on device")
    assert_clean_failure(cli(str(pristine["sharded"]), "-o", str(out)), out, "No space left on device")

    calls.update(n=0, error=KeyboardInterrupt())
    result = cli(str(pristine["sharded"]), "-o", str(out))
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.*"))

    monkeypatch.setattr(stream_module, "convert_unit", real)

    def broken_reload(*args, **kwargs):
        raise DGemmaError("model.safetensors: checkpoint is missing tensor x")

    monkeypatch.setattr(output_module, "load_model", broken_reload)
    assert_clean_failure(
        cli(str(pristine["sharded"]), "-o", str(out)), out, "verification", "missing tensor x"
    )


KILLABLE = textwrap.dedent(
    """
    import sys, time
    import typer
    from dgemma_mlx.convert import stream
    from dgemma_mlx.cli.convert import convert_command

    real = stream.convert_unit
    def slow(*args, **kwargs):
        time.sleep(0.05)
        return real(*args, **kwargs)
    stream.convert_unit = slow
    typer.run(convert_command)
    """
)


def test_sigkill_mid_conversion_leaves_no_complete_looking_output(pristine, tmp_path):
    src, out = pristine["sharded"], tmp_path / "out"
    staging = tmp_path / ".out.partial"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(src), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(staging.glob("*.safetensors")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "conversion never started writing"
            time.sleep(0.01)
        time.sleep(0.3)  # well into the shards
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert (staging / output_module.MARKER).exists()  # clearly marked partial
    assert not (staging / "config.json").exists() and not (staging / "model.safetensors.index.json").exists()

    rerun = cli(str(src), "-o", str(out))
    assert rerun.exit_code == 0, rerun.stderr
    assert (out / "config.json").exists() and not (out / output_module.MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the stale staging dir is gone
