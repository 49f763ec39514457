"""`dgemma generate` and `dgemma info` through Typer's test runner on a tiny real-vocabulary model."""

import json
import re

import pytest
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app

ANSI = re.compile(r"\x1b\[")


@pytest.fixture()
def runner():
    return CliRunner()


def test_generate_prints_the_answer_on_stdout_and_stats_on_stderr(runner, chat_model_dir):
    result = runner.invoke(app, ["generate", "-m", str(chat_model_dir), "-p", "Hello there", "--seed", "1"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip()  # the (random-model) answer
    assert "tokens/forward" in result.stderr and "canvas 1:" in result.stderr
    assert not ANSI.search(result.stdout + result.stderr)  # not a TTY: plain output, no escape codes


def test_generate_json_and_stdin(runner, chat_model_dir):
    result = runner.invoke(
        app,
        ["generate", "-m", str(chat_model_dir), "-p", "-", "--json", "--seed", "2", "--steps", "3"],
        input="Why is the sky blue?",
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert set(payload) == {"text", "tokens", "stats"}
    assert payload["stats"]["passes"][0] <= 3 * payload["stats"]["canvases"]
    assert payload["stats"]["prompt_tokens"] > 5


def test_generate_is_reproducible_by_seed_and_model_env(runner, chat_model_dir, monkeypatch):
    monkeypatch.setenv("DGEMMA_MODEL", str(chat_model_dir))
    a = runner.invoke(app, ["generate", "-p", "Hi", "--raw", "--json", "--seed", "5"])
    b = runner.invoke(app, ["generate", "-p", "Hi", "--raw", "--json", "--seed", "5"])
    assert a.exit_code == b.exit_code == 0
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]


def test_missing_model_is_a_one_line_user_error(runner, monkeypatch, tmp_path):
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    result = runner.invoke(app, ["generate", "-p", "hi"])
    assert result.exit_code == 1
    assert "dgemma convert" in result.stderr and "dgemma sudoku" in result.stderr
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["info", "-m", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such model directory" in result.stderr


def test_bad_generation_parameter_is_a_user_error(runner, chat_model_dir):
    result = runner.invoke(
        app, ["generate", "-m", str(chat_model_dir), "-p", "x", "--t-min", "0.9", "--t-max", "0.5"]
    )
    assert result.exit_code == 1 and "t_max" in result.stderr and "Traceback" not in result.output


def test_usage_errors_exit_2(runner):
    assert runner.invoke(app, ["generate"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_info_describes_the_model(runner, chat_model_dir):
    result = runner.invoke(app, ["info", "-m", str(chat_model_dir)])
    assert result.exit_code == 0, result.stderr
    assert (
        "vocab 262144" in result.stdout and "B total" in result.stdout and "quantized   none" in result.stdout
    )
