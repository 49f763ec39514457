"""`dgemma batch` and the `dgemma_mlx.batch` library: input parsing with line numbers, grouping by
overrides, results written as each row finishes, and resume after a kill."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx import batch as B
from dgemma_mlx import generate
from dgemma_mlx.cli.app import app

ANSI = re.compile(r"\x1b[\[\]]")
DGEMMA = [sys.executable, "-c", "from dgemma_mlx.cli.app import main; main()"]


def rows_in(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the library -----------------------------------------------------------------------------------
def test_jsonl_lines_are_parsed_or_reported_by_line_number(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            [
                json.dumps({"id": 1, "prompt": "hello"}),
                json.dumps({"id": "b", "messages": [{"role": "user", "content": "hi"}], "system": "s"}),
                "{broken",
                "",
                json.dumps({"id": 3}),
                json.dumps({"id": 4, "prompt": "x", "t_min": 5}),
                json.dumps({"id": 5, "prompt": "x", "max_denoising_steps": 3, "frobnicate": 1}),
                json.dumps({"id": 1, "prompt": "again"}),
                json.dumps(["not", "an", "object"]),
                json.dumps({"id": 6, "messages": [{"content": "no role"}]}),
                json.dumps({"id": 7, "prompt": "ok", "max_denoising_steps": 3}),
            ]
        )
    )
    requests, bad = B.read_requests(src)
    assert [(r.id, r.line) for r in requests] == [(1, 1), ("b", 2), (7, 11)]
    assert requests[1].system == "s" and requests[2].overrides == {"max_denoising_steps": 3}
    reasons = {b.line: b.reason for b in bad}
    assert set(reasons) == {3, 5, 6, 7, 8, 9, 10}
    assert "not valid JSON" in reasons[3] and "exactly one of" in reasons[5] and "t_min" in reasons[6]
    assert "frobnicate" in reasons[7] and "first on line 1" in reasons[8] and "JSON object" in reasons[9]
    assert "role" in reasons[10]


def test_plain_text_and_stdin_and_explicit_format(tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("first prompt\n\n{looks like json but is text}\n")
    requests, bad = B.read_requests(src, "text")
    assert [(r.id, r.prompt) for r in requests] == [(1, "first prompt"), (3, "{looks like json but is text}")]
    assert not bad
    requests, bad = B.read_requests(io.StringIO('{"id": "x", "prompt": "p"}\n'))  # auto: JSON lines
    assert requests[0].id == "x" and not bad
    with pytest.raises(B.DGemmaError, match="no such input file"):
        B.read_requests(tmp_path / "missing.jsonl")


def test_batches_share_overrides_and_respect_the_size(loaded):
    model, tokenizer = loaded
    requests = [
        B.Request(i, f"prompt {i}", i + 1, overrides={"max_denoising_steps": 2} if i % 2 else {})
        for i in range(7)
    ]
    jobs, bad = B.prepare(model, tokenizer, requests, {"max_new_tokens": 8})
    assert not bad and all(j.overrides["max_new_tokens"] == 8 for j in jobs)
    plan = B.plan_batches(jobs, 2)
    assert [[j.request.id for j in b] for b in plan] == [[0, 2], [4, 6], [1, 3], [5]]
    assert all(len({j.group for j in b}) == 1 for b in plan)


def test_rows_written_early_match_the_final_result(loaded):
    """Rows finishing at EOS are emitted at their canvas; their stats must equal the engine's."""
    model, tokenizer = loaded
    requests = [B.Request(i, p, i + 1) for i, p in enumerate(["hello there", "tell me a story", "why", "hi"])]
    jobs, _ = B.prepare(model, tokenizer, requests, {"max_new_tokens": 32})
    rows = {row["id"]: row for row in B.generate_batch(model, tokenizer, jobs, seed=3)}
    reference = generate(model, tokenizer, [j.ids for j in jobs], seed=3, max_new_tokens=32)
    for b, job in enumerate(jobs):
        row = rows[job.request.id]
        assert row == {"id": job.request.id, **B.result_row(reference, b)}
    assert any(r["finished"] for r in rows.values())  # the early path was exercised


def test_torn_tail_is_repaired_and_ids_are_read_back(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": 1, "text": "a"}\n{"id": "x", "text": "b"}\n{"id": 9, "te')
    assert B.repair_tail(out) is True
    assert out.read_text().endswith("}\n") and B.completed_ids(out) == {"1", "x"}
    assert B.repair_tail(out) is False
    with B.ResultWriter(out) as writer:
        writer.write({"id": 2, "text": "c"})
    assert [r["id"] for r in rows_in(out)] == [1, "x", 2]


# -- the command -----------------------------------------------------------------------------------
def test_batch_reports_malformed_lines_and_writes_the_rest(model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        json.dumps({"id": 1, "prompt": "Hello"}),
        json.dumps({"id": 2, "messages": [{"role": "user", "content": "Hi"}], "max_denoising_steps": 2}),
        "{broken",
        json.dumps({"id": 3}),
        json.dumps(
            {"id": 4, "messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]}
        ),
        json.dumps({"id": 5, "prompt": "why", "max_new_tokens": 8}),
    ]
    src.write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir), "--seed", "0"])
    assert result.exit_code == 1, result.output  # some lines were malformed: not a clean success
    rows = {r["id"]: r for r in rows_in(out)}
    assert sorted(rows) == [1, 2, 5]
    assert rows[2]["passes"] <= 2 * 2  # its own max_denoising_steps (two canvases at most)
    assert len(rows[5]["tokens"]) <= 8
    assert set(rows[1]) == {
        "id",
        "prompt_sha",
        "text",
        "finished",
        "tokens",
        "generated_tokens",
        "passes",
        "tokens_per_forward",
    }
    errors = {e["line"]: e for e in rows_in(tmp_path / "out.errors.jsonl")}
    assert set(errors) == {3, 4, 5} and errors[5]["id"] == 4 and "system message" in errors[5]["error"]
    assert "skipped line 3: not valid JSON" in result.stderr and "3 written" in result.stderr
    assert not ANSI.search(result.stdout + result.stderr)
    again = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir)])
    assert again.exit_code == 1 and "--resume" in again.stderr  # never silently appends to old results
    resumed = runner.invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir), "--resume"])
    assert resumed.exit_code == 1 and "0 written" in resumed.stderr and len(rows_in(out)) == 3


def test_batch_from_stdin_with_global_options(model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app,
        ["batch", "-", "-o", str(out), "-m", str(model_dir), "--steps", "1", "--raw", "-b", "2"],
        input="one\ntwo\nthree\n",
    )
    assert result.exit_code == 0, result.output
    rows = rows_in(out)
    assert sorted(r["id"] for r in rows) == [1, 2, 3] and all(r["passes"] <= 2 for r in rows)
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_batch_output_problems_are_user_errors(model_dir, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    result = CliRunner().invoke(
        app, ["batch", str(src), "-o", str(tmp_path), "-m", str(model_dir), "--resume"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["batch", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "o.jsonl")])
    assert missing.exit_code == 1 and "no such input file" in missing.stderr


def test_resume_after_a_kill_gives_every_id_exactly_once(tmp_path):
    # no EOS and no early stopping: each prompt takes a few hundred passes, so the kill lands mid-file
    slow = word_chat_model(
        tmp_path / "slow",
        max_new_tokens=24,
        max_denoising_steps=48,
        eos_token_id=[],
        stability_threshold=None,
    )
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("".join(f"prompt number {i}\n" for i in range(16)))
    cmd = [*DGEMMA, "batch", str(src), "-o", str(out), "-m", str(slow), "-b", "2", "--seed", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = [r["id"] for r in rows_in(out)]  # every line on disk is a whole result
    assert 3 <= len(partial) < 16, "the kill should land mid-file"
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["id"] for r in rows_in(out)]
    assert sorted(ids) == list(range(1, 17))  # plain text: the id is the line number; each exactly once
    assert f"{len(partial)} already there" in resumed.stderr
