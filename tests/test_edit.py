"""`dgemma edit` and `dgemma_mlx.edit` / `dgemma_mlx.textfile` on the tiny word-level model.

The model's words are arbitrary (a random model); what must hold is the machinery: the diff applies
and gives exactly the rewritten file, the canvas starts from the span's text, `--in-place` replaces
atomically and keeps a backup, and binary or concurrently changed files are never written.
"""

import io
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dgemma_mlx import stream_generate
from dgemma_mlx.cli.app import app
from dgemma_mlx.edit import (
    EditResult,
    EditStart,
    clean_answer,
    edit,
    edit_prompt,
    edit_stream,
    parse_lines,
    split_span,
    unified_diff,
)
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.events import FinishEvent, PassEvent
from dgemma_mlx.noise import NumpyNoise
from dgemma_mlx.textfile import read_text_file, replace_atomically

TEXT = "hello there\nthe sky is blue\nwhy is the sun big ?\ngood night\n"
INSTRUCTION = "tell me about the moon"


# -- pieces ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [("2-3", (2, 3)), ("4", (4, 4)), (" 1 - 2 ", (1, 2))])
def test_line_ranges(spec, expected):
    assert parse_lines(spec) == expected


@pytest.mark.parametrize("spec", ["3-1", "0-2", "a-b", "1-", "-2", "1,3"])
def test_bad_line_ranges_are_one_line_errors(spec):
    with pytest.raises(DGemmaError, match="--lines"):
        parse_lines(spec)


def test_span_split_and_past_the_end():
    span = split_span(TEXT, 2, 3)
    assert span.before == "hello there\n" and span.after == "good night\n"
    assert span.text == "the sky is blue\nwhy is the sun big ?\n"
    assert span.replaced(span.text) == TEXT
    with pytest.raises(DGemmaError, match="has 4 lines"):
        split_span(TEXT, 3, 5)
    # lines are counted as editors and patch count them: a form feed or U+2028 does not end a line
    assert split_span("a\n\fb\u2028c\nd\n", 2, 2).text == "\fb\u2028c\n"
    assert split_span("a\r\nb\r\n", 2, 2).newline == "\r\n"


def test_answers_are_cleaned_to_span_text():
    assert clean_answer("```python\nx = 1\n```", "a\n", "\n") == "x = 1\n"
    assert clean_answer("\n\n  indented\n\n", "a\n", "\n") == "  indented\n"
    assert clean_answer("one\ntwo", "a\r\nb\r\n", "\r\n") == "one\r\ntwo\r\n"  # the span's CRLF kept
    assert clean_answer("last line\n", "no newline at end", "\n") == "last line"
    assert clean_answer("", "a\n", "\n") == ""  # an empty answer deletes the span


def test_the_prompt_holds_the_instruction_and_the_whole_file_with_the_span_marked(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text(TEXT)
    source = read_text_file(path)
    prompt = edit_prompt(source, split_span(TEXT, 2, 3), INSTRUCTION)
    assert INSTRUCTION in prompt and "notes.txt" in prompt and "lines 2-3" in prompt
    assert "hello there\n<<<EDIT\nthe sky is blue\nwhy is the sun big ?\nEDIT>>>\ngood night\n" in prompt


@pytest.mark.parametrize(
    "old, new",
    [
        (TEXT, TEXT.replace("the sky is blue\n", "the moon is big\nand old\n")),
        ("a\r\nb\r\nc\r\n", "a\r\nx\r\nc\r\n"),
        ("a\nb\nlast", "a\nb\nnew last"),  # no newline at the end of the file
        ("a\nb\n", "a\n"),
        ("x\n\fpage two\u2028same line\ny\n", "x\n\fpage 2\u2028same line\ny\n"),
    ],
)
def test_the_diff_applies_with_patch_and_gives_the_new_file(tmp_path, old, new):
    (tmp_path / "f.txt").write_bytes(old.encode())
    diff = unified_diff(old, new, "f.txt")
    done = subprocess.run(
        ["patch", "-p1", "--binary", "-s"], cwd=tmp_path, input=diff.encode(), capture_output=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "f.txt").read_bytes() == new.encode()


# -- the library on the tiny model -----------------------------------------------------------------


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text(TEXT)
    return read_text_file(path)


def test_the_canvas_starts_from_the_span_text(loaded, source):
    model, tokenizer = loaded
    span = split_span(source.text, 2, 3)
    events = list(edit_stream(model, tokenizer, source, span, INSTRUCTION, noise=NumpyNoise(3)))
    start = events[0]
    assert isinstance(start, EditStart) and start.ids == tokenizer.encode(span.text, add_special_tokens=False)
    result = events[-1]
    assert isinstance(result, EditResult) and isinstance(events[-2], FinishEvent)
    # the same generation by hand: the edit is exactly a run whose canvas starts from the span's ids
    prompt = edit_prompt(source, span, INSTRUCTION)
    budget = result.generation.config.max_new_tokens
    by_hand = list(
        stream_generate(
            model, tokenizer, prompt, noise=NumpyNoise(3), canvas_init=start.ids, max_new_tokens=budget
        )
    )
    assert np.array_equal(by_hand[-1].result.sequences, result.generation.sequences)
    from_noise = list(stream_generate(model, tokenizer, prompt, noise=NumpyNoise(3), max_new_tokens=budget))
    first = [e for e in events if isinstance(e, PassEvent)][0]
    assert not np.array_equal(first.draft, [e for e in from_noise if isinstance(e, PassEvent)][0].draft)
    assert result.new_text == span.before + result.new_span + span.after


def test_a_file_changed_during_the_edit_is_never_written(loaded, source):
    model, tokenizer = loaded
    result = edit(model, tokenizer, source, split_span(source.text, 2, 2), INSTRUCTION, seed=1)
    source.path.write_text(TEXT + "a line someone else added\n")
    with pytest.raises(DGemmaError, match="changed on disk"):
        replace_atomically(source, result.new_text)
    assert source.path.read_text() == TEXT + "a line someone else added\n"
    assert [p.name for p in source.path.parent.iterdir()] == ["story.txt"]  # no backup, no temp file


def test_replace_keeps_a_backup_the_mode_and_a_symlink(tmp_path):
    target = tmp_path / "real.txt"
    target.write_text(TEXT)
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    backup = replace_atomically(read_text_file(link), "new text\n")
    assert link.is_symlink() and target.read_text() == "new text\n"
    assert backup == tmp_path / "real.txt.bak" and backup.read_text() == TEXT
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    second = replace_atomically(read_text_file(target), "newer\n")
    assert (
        second.name == "real.txt.bak.1" and second.read_text() == "new text\n" and backup.read_text() == TEXT
    )


@pytest.mark.parametrize(
    "data, message",
    [(b"ab\x00cd\n", "binary file"), (b"caf\xe9\n", "not a UTF-8 text file (byte 0xe9 at offset 3)")],
)
def test_binary_and_non_utf8_files_are_refused(tmp_path, data, message):
    path = tmp_path / "f"
    path.write_bytes(data)
    with pytest.raises(DGemmaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_text_file(path)


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(DGemmaError, match="not a regular file"):
        read_text_file(fifo)


# Killed at the two moments that matter: halfway through writing the new text, and with the backup
# made but the rename not yet done. Either way the file holds its original bytes.
KILL_POINTS = {
    "mid-write": (
        "def hang(fd, data):\n"
        "    os.write(fd, bytes(data[: len(data) // 2]))\n"
        "    open(READY, 'w').close(); time.sleep(60)\n"
        "textfile._write_all = hang\n"
    ),
    "before-rename": (
        "def hang(src, dst):\n    open(READY, 'w').close(); time.sleep(60)\ntextfile.os.replace = hang\n"
    ),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_during_the_in_place_write_leaves_the_original_intact(tmp_path, point):
    path, ready = tmp_path / "big.txt", tmp_path / "ready"
    original = ("the sky is blue\n" * 20000).encode()
    path.write_bytes(original)
    code = (
        "import os, time\nfrom dgemma_mlx import textfile\n"
        f"READY = {str(ready)!r}\n{KILL_POINTS[point]}"
        f"textfile.replace_atomically(textfile.read_text_file({str(path)!r}), 'the moon\\n' * 40000)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready.exists(), "the writer never reached the kill point"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert path.read_bytes() == original
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".dgemma-tmp")]
    assert len(leftovers) == 1  # the interrupted write went to a temporary file, never to big.txt
    assert (tmp_path / leftovers[0]).stat().st_size < 40000 * len("the moon\n") or point == "before-rename"


# -- the command -----------------------------------------------------------------------------------


@pytest.fixture()
def cli(model_dir):
    runner = CliRunner()

    def invoke(*args, model=True):
        return runner.invoke(app, [*args, *(["-m", str(model_dir)] if model else [])])

    return invoke


def seed_with(loaded, source, finish_reason, **kwargs):
    """A sampler seed for which this edit ends with `finish_reason` (the model is random)."""
    model, tokenizer = loaded
    span = split_span(source.text, 2, 3)
    for seed in range(20):
        result = edit(model, tokenizer, source, span, INSTRUCTION, seed=seed, **kwargs)
        if result.generation.finish_reasons[0] == finish_reason:
            return seed, result
    pytest.fail(f"no seed ends the edit with {finish_reason!r}")


def test_command_prints_the_diff_and_leaves_the_file_alone(cli, loaded, source):
    seed, expected = seed_with(loaded, source, "eos")
    before = os.stat(source.path)
    out = cli("edit", str(source.path), "--lines", "2-3", "-i", INSTRUCTION, "--seed", str(seed))
    assert out.exit_code == 0, out.output
    assert out.stdout == expected.diff() and out.stdout.startswith(f"--- a/{str(source.path).lstrip('/')}\n")
    assert source.path.read_text() == TEXT and os.stat(source.path).st_mtime_ns == before.st_mtime_ns
    assert sorted(p.name for p in source.path.parent.iterdir()) == ["story.txt"]


def test_command_in_place_writes_the_same_result_and_keeps_a_backup(cli, loaded, source):
    seed, expected = seed_with(loaded, source, "eos")
    out = cli(
        "edit", str(source.path), "--lines", "2-3", "-i", INSTRUCTION, "--seed", str(seed), "--in-place"
    )
    assert out.exit_code == 0, out.output
    assert out.stdout == "" and "story.txt.bak" in out.stderr
    assert source.path.read_text() == expected.new_text != TEXT
    assert (source.path.parent / "story.txt.bak").read_text() == TEXT


def test_command_in_place_refuses_a_rewrite_cut_at_the_budget(cli, loaded, source):
    seed, _ = seed_with(loaded, source, "length", max_new_tokens=8)  # one canvas: room to be cut short
    argv = ["--lines", "2-3", "-i", INSTRUCTION, "--seed", str(seed), "--max-tokens", "8", "--in-place"]
    out = cli("edit", str(source.path), *argv)
    assert out.exit_code == 1 and "token budget" in out.stderr and "left as it was" in out.stderr
    assert source.path.read_text() == TEXT and not (source.path.parent / "story.txt.bak").exists()


def test_command_refuses_a_file_changed_while_the_model_worked(cli, source, monkeypatch):
    import dgemma_mlx.edit as edit_module

    real = edit_module.edit_stream

    def meanwhile(*args, **kwargs):
        for event in real(*args, **kwargs):
            if isinstance(event, PassEvent) and source.path.read_text() == TEXT:
                source.path.write_text(TEXT.upper())  # an editor saved the file mid-generation
            yield event

    monkeypatch.setattr(edit_module, "edit_stream", meanwhile)
    for extra in ([], ["--in-place"]):
        source.path.write_text(TEXT)
        out = cli("edit", str(source.path), "--lines", "1-2", "-i", INSTRUCTION, "--seed", "1", *extra)
        assert out.exit_code == 1 and "changed on disk during the edit" in out.stderr, out.output
        assert source.path.read_text() == TEXT.upper() and out.stdout == ""
    assert sorted(p.name for p in source.path.parent.iterdir()) == ["story.txt"]


@pytest.mark.parametrize(
    "content, argv, message",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", ["--lines", "1-1"], "binary file"),
        (b"caf\xe9 au lait\n", ["--lines", "1-1"], "not a UTF-8 text file"),
        (TEXT.encode(), ["--lines", "3-9"], "has 4 lines"),
        (TEXT.encode(), ["--lines", "3-2"], "--lines '3-2'"),
    ],
)
def test_bad_input_is_one_line_before_loading(cli, tmp_path, content, argv, message):
    path = tmp_path / "input"
    path.write_bytes(content)
    out = cli("edit", str(path), *argv, "-i", INSTRUCTION)
    assert out.exit_code == 1 and message in out.stderr and out.stderr.strip().count("\n") == 0, out.output
    assert "loading" not in out.stderr and path.read_bytes() == content


def test_missing_file_and_directory(cli, tmp_path):
    missing = cli("edit", str(tmp_path / "nope.txt"), "--lines", "1", "-i", INSTRUCTION)
    folder = cli("edit", str(tmp_path), "--lines", "1", "-i", INSTRUCTION)
    assert missing.exit_code == folder.exit_code == 1
    assert "no such file" in missing.stderr and "is a directory" in folder.stderr


def test_the_live_view_shows_the_old_text_first(loaded, source):
    from dgemma_mlx.cli.span_view import EditView

    model, tokenizer = loaded
    buffer = io.StringIO()
    view = EditView(Console(file=buffer, force_terminal=True, width=100, height=30), tokenizer)
    events = edit_stream(model, tokenizer, source, split_span(source.text, 2, 3), INSTRUCTION, seed=0)
    with view:
        for event in events:
            view.handle(event)
            if isinstance(event, EditStart):
                shown = buffer.getvalue()
                assert "lines 2-3" in shown and all(w in shown for w in ("sky", "blue", "why", "sun"))
