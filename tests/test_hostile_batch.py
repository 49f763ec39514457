"""Issue #22, data loss in batch: path collisions refused before any file is touched, a resumed
seeded run equal to the uninterrupted one row for row, and an edited input never silently misaligned."""

import hashlib
import json
import os

import pytest
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx import batch as B
from dgemma_mlx import load
from dgemma_mlx.cli.app import app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return word_chat_model(tmp_path_factory.mktemp("tiny-chat"), max_new_tokens=16)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load(model_dir)


def snapshot(root):
    """Every file under `root` (links as links) -> a checksum of its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                out[path] = "link:" + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[path] = "dir"
    return out


def one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- path collisions --------------------------------------------------------------------------------
def _collisions(tmp):
    """(argv after IN, IN, what the message names) for every way a path can clash, spelled many ways."""
    d = tmp / "work"
    src = d / "in.jsonl"
    out = d / "out.jsonl"
    spellings = {
        "same": lambda p: str(p),
        "dotdot": lambda p: str(p.parent / ".." / p.parent.name / p.name),
        "dot": lambda p: str(p.parent / "." / p.name),
        "symlink": lambda p: str(d / f"link-{p.name}"),
        "hardlink": lambda p: str(d / f"hard-{p.name}"),
    }
    cases = []
    for how, spell in spellings.items():
        cases.append((f"out-is-input-{how}", ["-o", spell(src)], "input", how))
        cases.append((f"errors-is-input-{how}", ["-o", str(out), "--errors", spell(src)], "input", how))
        cases.append((f"errors-is-output-{how}", ["-o", str(out), "--errors", spell(out)], "output", how))
    cases.append(("out-is-dir", ["-o", str(d)], "directory", None))
    cases.append(("out-is-subdir", ["-o", str(d / "sub")], "directory", None))
    cases.append(("errors-is-dir", ["-o", str(out), "--errors", str(d / "sub")], "directory", None))
    # the default errors file (OUT.errors.jsonl) would be the input
    cases.append(("default-errors-is-input", ["-o", str(d / "in")], "input", "default"))
    return cases


CASE_NAMES = [c[0] for c in _collisions(__import__("pathlib").Path("/x"))]


def _setup(tmp, how):
    d = tmp / "work"
    d.mkdir()
    (d / "sub").mkdir()
    src, out = d / "in.jsonl", d / "out.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}"}) + "\n" for i in range(3)))
    out.write_text(json.dumps({"id": 0, "text": "kept"}) + "\n")
    if how == "default":  # the input is named like an errors file
        (d / "in.errors.jsonl").write_text(src.read_text())
        src.unlink()
        return d / "in.errors.jsonl"
    for target in (src, out):
        if how == "symlink":
            (d / f"link-{target.name}").symlink_to(target)
        elif how == "hardlink":
            os.link(target, d / f"hard-{target.name}")
    return src


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_colliding_paths_are_refused_before_any_file_is_touched(model_dir, tmp_path, name, resume):
    case = {c[0]: c for c in _collisions(tmp_path)}[name]
    _, argv, needle, how = case
    src = _setup(tmp_path, how)
    before = snapshot(tmp_path)
    args = ["batch", str(src), *argv, "-m", str(model_dir), "--seed", "0", *(["--resume"] if resume else [])]
    result = CliRunner().invoke(app, args)
    one_line_error(result, needle)
    assert snapshot(tmp_path) == before  # nothing written, truncated, removed or created


def test_stdin_is_never_a_collision(model_dir, tmp_path):
    out = tmp_path / "-"  # even an output file literally named "-"
    result = CliRunner().invoke(
        app, ["batch", "-", "-o", str(out), "-m", str(model_dir), "--raw"], input="one\ntwo\n"
    )
    assert result.exit_code == 0, result.output
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == [1, 2]


def test_check_paths_library():
    with pytest.raises(B.DGemmaError, match="same file"):
        B.check_paths("a.txt", B.Path("a.txt"), B.Path("b.jsonl"))
    B.check_paths("-", B.Path("a.txt"), B.Path("b.jsonl"))  # no error


# -- resume reproduces the uninterrupted run -------------------------------------------------------
class Killed(Exception):
    pass


def run_until(loaded, src, out, stop_after, batch_size, seed, resume=False):
    """A BatchRun that dies (as if killed) after `stop_after` rows are on disk; None runs to the end."""
    model, tokenizer = loaded
    job = B.BatchRun(str(src), out, resume=resume)
    job.prepare(model, tokenizer, {"max_new_tokens": 16})
    for n, _ in enumerate(job.run(model, tokenizer, batch_size, seed), start=1):
        if stop_after is not None and n >= stop_after:
            raise Killed
    return job


def rows_by_id(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r for r in rows}


PROMPTS = [
    "hello there",
    "tell me a story",
    "why",
    "hi",
    "what is this",
    "hello",
    "a story please",
    "why not",
    "tell me",
    "there",
]


@pytest.mark.parametrize("batch_size", [1, 3, 4])
@pytest.mark.parametrize("kills", [[1], [4], [2, 5], [7]])
def test_a_resumed_seeded_run_equals_the_uninterrupted_one(loaded, tmp_path, batch_size, kills):
    src = tmp_path / "in.txt"
    src.write_text("".join(p + "\n" for p in PROMPTS))
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    run_until(loaded, src, whole, None, batch_size, 11)
    expected = rows_by_id(whole)
    assert sorted(expected) == list(range(1, len(PROMPTS) + 1))
    written = 0
    for k, stop in enumerate(kills):
        with pytest.raises(Killed):
            run_until(loaded, src, resumed, stop, batch_size, 11, resume=k > 0)
        written += stop
        assert len(rows_by_id(resumed)) == written
    job = run_until(loaded, src, resumed, None, batch_size, 11, resume=True)
    assert job.already_done == written
    assert rows_by_id(resumed) == expected  # every field of every row, prompt_sha included


def test_the_seed_matters_so_the_comparison_above_means_something(loaded, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(p + "\n" for p in PROMPTS))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run_until(loaded, src, a, None, 3, 11)
    run_until(loaded, src, b, None, 3, 12)
    rows_a, rows_b = rows_by_id(a), rows_by_id(b)
    assert any(rows_a[i]["tokens"] != rows_b[i]["tokens"] for i in rows_a)


def test_resume_after_a_kill_at_the_command_line_equals_the_whole_run(model_dir, tmp_path, monkeypatch):
    src = tmp_path / "in.txt"
    src.write_text("".join(p + "\n" for p in PROMPTS))
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    base = ["batch", str(src), "-m", str(model_dir), "-b", "3", "--seed", "4", "--raw"]
    assert CliRunner().invoke(app, [*base, "-o", str(whole)]).exit_code == 0
    real_write = B.ResultWriter.write

    def dying_write(self, row):
        if self.written >= 5:
            raise KeyboardInterrupt
        real_write(self, row)

    monkeypatch.setattr(B.ResultWriter, "write", dying_write)
    killed = CliRunner().invoke(app, [*base, "-o", str(part)])
    assert killed.exit_code == 130 and "continue with --resume" in killed.stderr
    monkeypatch.setattr(B.ResultWriter, "write", real_write)
    resumed = CliRunner().invoke(app, [*base, "-o", str(part), "--resume"])
    assert resumed.exit_code == 0 and "5 already there" in resumed.stderr, resumed.output
    assert rows_by_id(part) == rows_by_id(whole)


# -- an edited input is not silently misaligned ------------------------------------------------------
def test_rows_say_which_prompt_they_answer(loaded, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("alpha\n\nbeta\n")
    out = tmp_path / "out.jsonl"
    run_until(loaded, src, out, None, 2, 0)
    rows = rows_by_id(out)
    assert sorted(rows) == [1, 3]  # text ids are line numbers, blank lines included
    assert rows[1]["prompt_sha"] == hashlib.sha256(b"alpha").hexdigest()[:12]
    assert rows[3]["prompt_sha"] == hashlib.sha256(b"beta").hexdigest()[:12]


EDITS = {
    "line-inserted-on-top": lambda lines: ["a new first prompt", *lines],
    "line-removed": lambda lines: lines[1:],
    "line-edited": lambda lines: [lines[0], lines[1] + " (edited)", *lines[2:]],
    "lines-swapped": lambda lines: [lines[1], lines[0], *lines[2:]],
    "blank-line-inserted": lambda lines: ["", *lines],
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edited_text_input_is_refused_on_resume(model_dir, loaded, tmp_path, edit):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(p + "\n" for p in PROMPTS))
    with pytest.raises(Killed):
        run_until(loaded, src, out, 4, 2, 0)
    src.write_text("".join(p + "\n" for p in EDITS[edit](PROMPTS)))
    before = snapshot(tmp_path)
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir), "--resume"])
    one_line_error(result, "different prompt", "input line", "id ")
    assert snapshot(tmp_path) == before


def test_an_appended_input_resumes_normally(model_dir, loaded, tmp_path):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(p + "\n" for p in PROMPTS[:4]))
    run_until(loaded, src, out, None, 2, 0)
    src.write_text("".join(p + "\n" for p in PROMPTS))
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir), "--resume"])
    assert result.exit_code == 0, result.output
    rows = rows_by_id(out)
    assert sorted(rows) == list(range(1, len(PROMPTS) + 1))
    for i, prompt in enumerate(PROMPTS, start=1):
        assert rows[i]["prompt_sha"] == hashlib.sha256(prompt.encode()).hexdigest()[:12]


def test_an_edited_jsonl_prompt_or_system_is_refused(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    original = {"id": "q", "prompt": "hello", "system": "be brief"}
    src.write_text(json.dumps(original) + "\n")
    (request,) = B.read_requests(src)[0]
    out.write_text(json.dumps({"id": "q", "prompt_sha": request.prompt_sha, "text": "x"}) + "\n")
    B.BatchRun(str(src), out, resume=True)  # unchanged: fine
    for change in ({"prompt": "hello!"}, {"system": "be long"}, {"system": None}):
        src.write_text(json.dumps({**original, **change}) + "\n")
        with pytest.raises(B.DGemmaError, match="different prompt"):
            B.BatchRun(str(src), out, resume=True)
    legacy = tmp_path / "legacy.jsonl"  # rows from before prompt_sha: nothing to compare, accepted
    legacy.write_text(json.dumps({"id": "q", "text": "x"}) + "\n")
    assert B.BatchRun(str(src), legacy, resume=True).todo == []
