"""Hostile input at the command line (#22): typos answer fast without the model stack, a model load says
so on stderr at once, user text is printed literally, and bytes that are not UTF-8 are one line.

The fast-failure cases run in a fresh process each, since what matters is which modules got imported.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app

HEAVY = ("mlx", "mlx_lm", "transformers", "dgemma_mlx.model", "dgemma_mlx.loading")
PROBE = (
    "import sys; from typer.testing import CliRunner; from dgemma_mlx.cli.app import app; "
    "r = CliRunner().invoke(app, sys.argv[1:]); print(r.exit_code); print(repr(r.stderr)); "
    f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
)
DGEMMA = str(Path(sys.executable).parent / "dgemma")


def probe(*argv: str, cwd: Path | None = None) -> tuple[int, str, list[str]]:
    """The CLI in a fresh process: exit code, stderr, and the heavy modules it imported."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    code, err, modules = done.stdout.strip().split("\n")[-3:]
    return int(code), eval(err), eval(modules)  # noqa: S307 - our own repr output


TYPOS = [
    (("generate", "-p", "x", "-m", "/nonexistent"), 1, "/nonexistent: no such model directory"),
    (("generate", "-p", "", "-m", "/nonexistent"), 2, "the prompt is empty"),
    (("generate", "-p", "x", "--raw", "--system", "s", "-m", "/nonexistent"), 2, "--system"),
    (("generate", "-p", "x"), 1, "no model given"),
    (("chat", "--load", "missing.json"), 1, "missing.json: no such session file"),
    (("chat", "--load", "."), 1, "is a directory"),
    (("chat", "-m", "/nonexistent"), 1, "/nonexistent: no such model directory"),
    (("info", "-m", "/nonexistent"), 1, "/nonexistent: no such model directory"),
    (("sudoku", "--puzzle", "123"), 1, "puzzle has 3 cells"),
    (("sudoku", "--puzzle", "." * 81, "--count", "2"), 2, "--count"),
    (("sudoku", "--model", "/nonexistent"), 1, "/nonexistent: no such model directory"),
    (("generate", "--max-tokens", "0", "-p", "x"), 2, "--max-tokens"),
    (("models", "--bogus"), 2, "--bogus"),
    (("batch", "missing.jsonl", "-o", "out.jsonl", "-m", "/nonexistent"), 1, "missing.jsonl: no such input"),
    (("batch", ".", "-o", "out.jsonl"), 1, "is a directory"),
    (("batch", "-", "-o", ".", "-m", "/nonexistent"), 1, "is a directory"),
    (("generate", "-p", "x", "--entropy-bound", "nan"), 1, "entropy_bound must be a finite number"),
    (("convert", "/nonexistent/x"), 1, "/nonexistent/x: no such model directory"),
    (("convert", "./nosuch", "-o", "out"), 1, "./nosuch: no such model directory"),
]


@pytest.mark.parametrize("argv, code, message", TYPOS, ids=[" ".join(t[0])[:40] for t in TYPOS])
def test_typos_fail_fast_without_the_model_stack(argv, code, message, tmp_path, monkeypatch):
    env_free = {k: v for k, v in os.environ.items() if k != "DGEMMA_MODEL"}
    monkeypatch.setattr(os, "environ", env_free)  # the child inherits no $DGEMMA_MODEL
    got, err, modules = probe(*argv, cwd=tmp_path)
    assert got == code and message in err, err
    assert modules == []
    if code == 1:
        assert err.count("\n") == 1 and err.startswith("error: ")


@pytest.mark.parametrize("command", [("generate", "-p", "hello"), ("sudoku", "--count", "1", "--seed", "1")])
def test_loading_is_announced_on_stderr_only(command, model_dir):
    argv = [*command, "-m", str(model_dir), "--view", "plain"] if command[0] == "generate" else [*command]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    first = result.stderr.splitlines()[0]
    assert first.startswith("loading ") and first.endswith("…")
    assert "loading" not in result.stdout


def test_view_none_stays_silent_while_loading(model_dir):
    result = CliRunner().invoke(app, ["generate", "-p", "hi", "-m", str(model_dir), "--view", "none"])
    assert result.exit_code == 0 and "loading" not in result.stderr


MARKUP = ["[bold]x[/]", "[/]", "a[red]b", "[link=x]y[/link]", "[[x]]", "\\[b]"]


@pytest.mark.parametrize("name", MARKUP)
def test_user_text_in_messages_is_printed_literally(name, tmp_path):
    missing = str(tmp_path / name / "model")
    runner = CliRunner()
    for argv in (
        ["generate", "-p", "x", "-m", missing],
        ["info", "-m", missing],
        ["chat", "--load", str(tmp_path / f"{name}.json"), "-m", missing],
        ["sudoku", "--model", missing],
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 1, result.output
        assert name in result.stderr and result.stderr.count("\n") == 1, (argv, result.stderr)


def run_bytes(argv: list[bytes], stdin: bytes | None, model_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "DGEMMA_MODEL": str(model_dir)}
    return subprocess.run([DGEMMA.encode(), *argv], input=stdin, capture_output=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "argv, stdin",
    [
        ([b"generate", b"-p", b"\xff"], None),
        ([b"generate", b"-p", b"caf\xc3"], None),
        ([b"generate", b"-p", b"ok", b"--system", b"\xfe\xff"], None),
        ([b"generate"], b"\xff"),
        ([b"generate", b"-p", b"-"], b"hello \xc3\x28 world"),
        ([b"chat", b"--system", b"\xff"], b"hi\n"),
    ],
)
def test_prompts_that_are_not_utf8_are_one_line(argv, stdin, model_dir):
    done = run_bytes(argv, stdin, model_dir)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode in (1, 2), err
    assert "not valid UTF-8" in err and "Traceback" not in err
    assert done.stdout == b""


def test_an_unwritable_output_is_one_line(tmp_path):
    """Root ignores permission bits, so the unwritable place is a path whose parent is a file."""
    from dgemma_mlx.cli.options import user_errors

    blocker = tmp_path / "file"
    blocker.write_text("x")
    import typer

    def write() -> None:
        with user_errors():
            (blocker / "out.jsonl").write_text("row")

    cli = typer.Typer()
    cli.command()(write)
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "Not a directory" in result.stderr and str(blocker) in result.stderr
