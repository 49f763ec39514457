"""`dgemma generate`, `dgemma info` and the shared CLI behaviour (errors, exit codes, no ANSI when piped).

Everything runs through Typer's test runner on the tiny word-level model (tests/tiny_models.py);
one test repeats the basics on the real 262,144-id Gemma 4 vocabulary.
"""

import json
import re
import subprocess
import sys

import pytest
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app

ANSI = re.compile(r"\x1b[\[\]]")


@pytest.fixture()
def run(model_dir):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, model: bool = True):
        argv = [*args, "-m", str(model_dir)] if model else list(args)
        return runner.invoke(app, argv, input=input)

    return invoke


def test_answer_on_stdout_view_and_stats_on_stderr_without_ansi(run):
    result = run("generate", "-p", "Tell me a story", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and "\n" not in result.stdout.strip()  # just the answer
    assert (
        "canvas 1:" in result.stderr and "tokens/forward" in result.stderr and "peak memory" in result.stderr
    )
    assert not ANSI.search(result.stdout + result.stderr)  # not a terminal: plain view, no escape codes


def test_json_from_stdin_with_dash_and_implicit(run):
    explicit = run(
        "generate", "-p", "-", "--json", "--seed", "2", "--steps", "3", input="Why is the sky blue?\n"
    )
    implicit = run("generate", "--json", "--seed", "2", "--steps", "3", input="Why is the sky blue?\n")
    assert explicit.exit_code == implicit.exit_code == 0, explicit.output + implicit.output
    payload = json.loads(explicit.stdout)
    assert json.loads(implicit.stdout) == {**payload, "stats": json.loads(implicit.stdout)["stats"]}
    assert set(payload) == {"text", "tokens", "finished", "stats"}
    stats = payload["stats"]
    assert stats["passes"][0] <= 3 * stats["canvases"]
    assert stats["prompt_tokens"] == 12  # <bos> <|turn> user why is the sky blue ? <turn|> <|turn> model
    assert not ANSI.search(explicit.stdout + explicit.stderr)


def test_seed_reproduces_and_model_comes_from_the_environment(run, model_dir, monkeypatch):
    monkeypatch.setenv("DGEMMA_MODEL", str(model_dir))
    a = run("generate", "-p", "hello", "--json", "--seed", "5", model=False)
    b = run("generate", "-p", "hello", "--json", "--seed", "5", model=False)
    assert a.exit_code == b.exit_code == 0
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]


def test_options_reach_the_generation(run):
    base = json.loads(run("generate", "-p", "hello there", "--json", "--seed", "0").stdout)
    raw = json.loads(run("generate", "-p", "hello there", "--json", "--raw").stdout)
    system = json.loads(run("generate", "-p", "hello there", "--json", "--system", "be good").stdout)
    think = run("generate", "-p", "hello there", "--json", "--think")
    assert raw["stats"]["prompt_tokens"] == 2  # no template: just the two words
    assert (
        system["stats"]["prompt_tokens"] == base["stats"]["prompt_tokens"] + 5
    )  # <|turn> system be good <turn|>
    think_payload = json.loads(think.stdout)
    assert think_payload["stats"]["prompt_tokens"] == base["stats"]["prompt_tokens"] + 4  # ... <|think|> ...
    assert "thinking" in think_payload
    short = run("generate", "-p", "hello", "--json", "--max-tokens", "3", "--steps", "2", "--t-min", "0.1")
    stats = json.loads(short.stdout)["stats"]
    assert stats["canvases"] == 1 and stats["passes"] == [2]


def test_cut_short_answers_say_so(run, tmp_path):
    # no EOS at all: every answer stops at the budget, and must not look complete
    slow = word_chat_model(tmp_path / "noeos", eos_token_id=[])
    result = CliRunner().invoke(app, ["generate", "-m", str(slow), "-p", "hi", "--json", "--max-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["finished"] is False
    assert "stopped at the token budget" in result.stderr and "--max-tokens" in result.stderr


def test_view_none_is_silent_and_plain_is_forced(run):
    quiet = run("generate", "-p", "hello", "--view", "none")
    assert quiet.exit_code == 0 and "canvas" not in quiet.stderr and "tokens/forward" not in quiet.stderr
    plain = run("generate", "-p", "hello", "--view", "plain")
    assert "canvas 1:" in plain.stderr


def test_missing_model_says_how_to_get_one(run, monkeypatch, tmp_path):
    monkeypatch.delenv("DGEMMA_MODEL", raising=False)
    for result in (
        run("generate", "-p", "hi", model=False),
        run("generate", "-p", "hi", "-m", str(tmp_path / "nope"), model=False),
        run("chat", model=False),
        run("info", model=False),
    ):
        assert result.exit_code == 1
        assert "dgemma convert" in result.stderr and "dgemma sudoku" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_broken_model_directory_is_one_line(run, tmp_path, model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    for command in (["generate", "-p", "hi"], ["info"]):
        result = run(*command, "-m", str(broken), model=False)
        assert result.exit_code == 1 and "truncated" in result.stderr and "Traceback" not in result.output


def test_user_errors_exit_1(run):
    result = run("generate", "-p", "x", "--t-min", "0.9", "--t-max", "0.5")
    assert result.exit_code == 1 and "t_max" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "argv, stdin",
    [
        (["generate"], ""),  # no prompt at all
        (["generate", "-p", "-"], "  \n"),  # an empty one on stdin
        (["generate", "-p", "x", "--raw", "--system", "s"], None),
        (["generate", "-p", "x", "--max-tokens", "0"], None),
        (["generate", "-p", "x", "--view", "fancy"], None),
        (["no-such-command"], None),
        (["batch"], None),
        (["batch", "in.txt", "-o", "out.jsonl", "--format", "yaml"], None),
    ],
)
def test_usage_errors_exit_2(run, argv, stdin):
    result = run(*argv, input=stdin, model=False)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_every_command_has_help(run):
    top = run("--help", model=False)
    assert top.exit_code == 0
    for command in ("generate", "chat", "batch", "info", "convert", "sudoku", "demo"):
        assert command in top.stdout
        assert run(command, "--help", model=False).exit_code == 0
    assert run("--version", model=False).stdout.startswith("dgemma-mlx ")


def test_help_does_not_load_the_model_stack():
    """`dgemma --help` and usage errors must answer at once: MLX-LM (and transformers behind it) cost
    seconds to import, so only a command that needs the model may pull them in."""
    code = (
        "import sys; from typer.testing import CliRunner; from dgemma_mlx.cli.app import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'sudoku' in r.output; "
        "print(sorted(m for m in ('mlx_lm', 'transformers', 'dgemma_mlx.model') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_info_describes_the_model(run, model_dir):
    text = run("info")
    assert text.exit_code == 0, text.output
    for expected in ("3 layers", "vocab 128", "4 x 16, top-2", "canvas      8 tokens", "quantized   none"):
        assert expected in text.stdout
    assert "chat template" in text.stdout and "K total" in text.stdout and not ANSI.search(text.stdout)
    summary = json.loads(run("info", "--json").stdout)
    assert summary["vocab_size"] == 128 and summary["quantization"] is None
    assert summary["parameters_active"] < summary["parameters_total"]
    assert summary["size_on_disk_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert summary["generation"]["max_new_tokens"] == 16


def test_real_gemma4_vocabulary_end_to_end(chat_model_dir):
    """The same command on the real vocabulary and the Gemma 4 chat template stand-in."""
    runner = CliRunner()
    result = runner.invoke(app, ["generate", "-m", str(chat_model_dir), "-p", "Hello there", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["stats"]["prompt_tokens"] > 5 and payload["tokens"]
    assert not ANSI.search(result.stdout + result.stderr)
