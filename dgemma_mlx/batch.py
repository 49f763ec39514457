"""Scripted batch generation: prompts from a file in, one JSON line per result out, resumable.

Input is JSONL (`{"id": ..., "prompt": "..."}` or `{"id": ..., "messages": [...]}`, optionally with a
`system` string and generation overrides named as in generation_config.json) or plain text with one
prompt per line, whose id is its line number. Malformed lines become `BadLine`s carrying their line
numbers; they never stop the rest.

Rows that share a batch must share generation parameters, so requests are grouped by their
overrides before being cut into batches of `batch_size`. Each result is written the moment its row
finishes (a row that hits EOS early does not wait for the rest of its batch), as one whole line,
flushed and fsynced: a killed run loses at most the rows still in flight, and `completed_ids` lets
a rerun skip everything already written.

Nothing is lost to a mistyped path: an output or errors file that is the input (or each other, by
resolved path or `os.path.samefile`), or a directory, is refused before any file is touched.

Resume reproduces the uninterrupted run row for row. Every row draws from its own noise stream, seeded
`seed + i` for the i-th row of the plan (noise.py), but a batch's shape (its left padding) still
touches the arithmetic, so batches are always planned over every runnable request, finished ones
included, exactly as an uninterrupted run plans them. On resume a batch whose rows are all written is
skipped, and a partly written batch is rerun whole with the same seeds, writing only its missing rows.

Every result row carries `prompt_sha`, the first 12 hex digits of the SHA-256 of what it answers (the
prompt text, or the messages as canonical JSON; a request's own `system` string is appended after a
NUL). A resume whose input no longer matches what an id answered (an edited or shifted text file,
where the id is the line number) is refused, naming the first such id and its line, before anything
is written: the old rows and the new input cannot both be right.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent, RowResult
from .fast_presets import FAST_KEY, expand
from .generation_config import GenerationConfig

OVERRIDE_KEYS = frozenset(f.name for f in fields(GenerationConfig)) | {FAST_KEY}  # a row may name a preset
REQUEST_KEYS = frozenset({"id", "prompt", "messages", "system"})
FORMATS = ("auto", "jsonl", "text")


@dataclass(frozen=True)
class Request:
    """One prompt to answer. `id` keeps its JSON type (int or str) for the output."""

    id: Any
    prompt: str | list[dict[str, Any]]
    line: int
    system: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """How ids are compared for duplicates and resume: 7 and "7" are the same id."""
        return id_key(self.id)

    @property
    def prompt_sha(self) -> str:
        """Which prompt a result answers (see the module docstring)."""
        text = (
            self.prompt
            if isinstance(self.prompt, str)
            else json.dumps(self.prompt, sort_keys=True, ensure_ascii=False)
        )
        if self.system is not None:
            text += "\0" + self.system
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


@dataclass(frozen=True)
class BadLine:
    """An input line that cannot be run, and why."""

    line: int
    reason: str
    id: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"line": self.line, "error": self.reason}
        if self.id is not None:
            out["id"] = self.id
        return out

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Job:
    """A request rendered to token ids, with its final generation overrides."""

    request: Request
    ids: list[int]
    overrides: dict[str, Any]

    @property
    def group(self) -> str:
        return json.dumps(self.overrides, sort_keys=True)


def id_key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- reading -----------------------------------------------------------------------------------------
def parse_json_line(text: str, line_no: int) -> Request | BadLine:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return BadLine(line_no, f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(row, dict):
        return BadLine(line_no, "expected a JSON object")
    rid = row.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, str | int):
        return BadLine(line_no, "needs an 'id' (a string or an integer)")
    prompt, messages = row.get("prompt"), row.get("messages")
    if (prompt is None) == (messages is None):
        return BadLine(line_no, "needs exactly one of 'prompt' or 'messages'", rid)
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        return BadLine(line_no, "'prompt' must be a non-empty string", rid)
    if messages is not None and (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in messages
        )
    ):
        return BadLine(line_no, "'messages' must be a non-empty list of {role, content} objects", rid)
    system = row.get("system")
    if system is not None and not isinstance(system, str):
        return BadLine(line_no, "'system' must be a string", rid)
    unknown = sorted(set(row) - REQUEST_KEYS - OVERRIDE_KEYS)
    if unknown:
        return BadLine(line_no, f"unknown field(s): {', '.join(unknown)}", rid)
    try:
        overrides = expand({k: v for k, v in row.items() if k in OVERRIDE_KEYS and v is not None})
        overrides = {k: v for k, v in overrides.items() if v is not None}
        GenerationConfig().replace(**overrides)
    except (DGemmaError, TypeError) as e:
        return BadLine(line_no, str(e), rid)
    return Request(rid, prompt if prompt is not None else messages, line_no, system, overrides)


def detect_format(lines: list[str], name: str) -> str:
    if name.endswith(".jsonl"):
        return "jsonl"
    first = next((line for line in lines if line.strip()), "")
    return "jsonl" if first.lstrip().startswith("{") else "text"


def read_requests(source: Path | IO[str], fmt: str = "auto") -> tuple[list[Request], list[BadLine]]:
    """Every runnable request, and every line that is not, in file order.

    `source` is a path, or an open text stream (`-` on the command line is stdin). Blank lines are
    skipped; a repeated id is a bad line pointing at the first one.
    """
    if fmt not in FORMATS:
        raise DGemmaError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")
    if isinstance(source, Path):
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DGemmaError(f"{source}: no such input file") from None
        except IsADirectoryError:
            raise DGemmaError(f"{source}: is a directory, not an input file") from None
        except UnicodeDecodeError:
            raise DGemmaError(f"{source}: not a UTF-8 text file") from None
        name = source.name
    else:
        text, name = source.read(), "-"
    lines = text.splitlines()
    if fmt == "auto":
        fmt = detect_format(lines, name)
    requests: list[Request] = []
    bad: list[BadLine] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        item = parse_json_line(raw, number) if fmt == "jsonl" else Request(number, raw.strip(), number)
        if isinstance(item, Request):
            if item.key in first_line:
                item = BadLine(number, f"duplicate id {item.id!r} (first on line {first_line[item.key]})")
            else:
                first_line[item.key] = number
        (requests if isinstance(item, Request) else bad).append(item)  # type: ignore[arg-type]
    return requests, bad


# -- the output file ---------------------------------------------------------------------------------
def repair_tail(out: Path) -> bool:
    """Cut a torn last line (the process died mid-write); returns whether anything was cut."""
    if not out.exists():
        return False
    with out.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return False
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        keep = 0
        chunk = 65536
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            pos = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return True


def completed_rows(out: Path) -> dict[str, str | None]:
    """Ids already written to `out` (as `Request.key`) -> the `prompt_sha` they answer (None in rows
    written before it existed); lines that are not results are ignored."""
    if not out.exists():
        return {}
    done: dict[str, str | None] = {}
    with out.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "id" in row:
                sha = row.get("prompt_sha")
                done[id_key(row["id"])] = sha if isinstance(sha, str) else None
    return done


def completed_ids(out: Path) -> set[str]:
    """Ids already written to `out` (as `Request.key`); lines that are not results are ignored."""
    return set(completed_rows(out))


def check_resume(requests: Iterable[Request], done: dict[str, str | None], out: Path) -> None:
    """Refuse a resume whose input no longer asks what the written rows answer."""
    changed = [r for r in requests if done.get(r.key) not in (None, r.prompt_sha)]
    if changed:
        first = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise DGemmaError(
            f"{out}: id {first.id!r} answers a different prompt than input line {first.line} has now{more}:"
            " the input changed since this output was written; write to a new output instead"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_paths(input_name: str, output: Path, errors: Path) -> None:
    """Refuse paths that would destroy data, before any file is opened for writing.

    The output or the errors file must not be the input (`-`, stdin, never is) or each other, and
    neither may be a directory.
    """
    for path, what in ((output, "output (-o)"), (errors, "errors file (--errors)")):
        if path.is_dir():
            raise DGemmaError(f"{path}: the {what} is a directory; name a file")
    source = None if input_name == "-" else Path(input_name).expanduser()
    pairs = [(output, "output (-o)", errors, "errors file (--errors)")]
    if source is not None:
        pairs = [
            (source, "input", output, "output (-o)"),
            (source, "input", errors, "errors file (--errors)"),
            *pairs,
        ]
    for a, a_what, b, b_what in pairs:
        if _same_file(a, b):
            raise DGemmaError(f"{b}: the {b_what} is the same file as the {a_what}; choose another path")


class ResultWriter:
    """Appends one JSON line per result, flushed and fsynced, so the file only ever holds whole results."""

    def __init__(self, path: Path):
        self.path = path
        self.file: IO[str] | None = None
        self.written = 0

    def __enter__(self) -> ResultWriter:
        repair_tail(self.path)
        self.file = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def write(self, row: dict[str, Any]) -> None:
        assert self.file is not None, "use ResultWriter as a context manager"
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.written += 1


def write_errors(path: Path, bad: list[BadLine]) -> None:
    """The errors file: one JSON object per bad line; removed when a run has none (it is ours)."""
    if not bad:
        if path.exists():
            path.unlink()
        return
    path.write_text("".join(json.dumps(b.to_dict(), ensure_ascii=False) + "\n" for b in bad))


def errors_path_for(out: Path) -> Path:
    if out.is_dir() or not out.name:  # `-o .` or `-o some/dir/`: there is no file name to build on
        raise DGemmaError(f"{out}: the output (-o) is a directory; name a file")
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.errors.jsonl")


# -- preparing and batching --------------------------------------------------------------------------
def prepare(
    model: Any,
    tokenizer: Any,
    requests: Iterable[Request],
    base_overrides: dict[str, Any] | None = None,
    chat_template: bool = True,
    system: str | None = None,
) -> tuple[list[Job], list[BadLine]]:
    """Render every prompt and validate its parameters against the model, before any generation.

    A template that rejects a conversation, or overrides that clash with the checkpoint's defaults
    (t_min above its t_max), make a bad line rather than failing a whole batch later.
    """
    jobs, bad = [], []
    from .api import prompt_to_ids, resolve_config  # the model stack: not needed to check the files

    base = resolve_config(model, tokenizer)
    for r in requests:
        overrides = {**(base_overrides or {}), **r.overrides}
        try:
            base.replace(**overrides)
            ids = prompt_to_ids(tokenizer, [r.prompt], chat_template, r.system or system)[0]
        except DGemmaError as e:
            bad.append(BadLine(r.line, str(e), r.id))
            continue
        jobs.append(Job(r, ids, overrides))
    return jobs, bad


def plan_batches(jobs: Iterable[Job], size: int) -> list[list[Job]]:
    """Batches of at most `size` jobs with identical overrides, groups in order of first appearance."""
    if size < 1:
        raise DGemmaError("batch size must be at least 1")
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]


def row_record(row: RowResult) -> dict[str, Any]:
    """One output line's fields (the caller adds the request's `id`)."""
    return {
        "text": row.text,
        "finished": row.finished,
        "tokens": row.tokens,
        "generated_tokens": row.generated_tokens,
        "passes": row.passes,
        "tokens_per_forward": row.tokens_per_forward,
    }


def result_row(result: GenerationResult, b: int) -> dict[str, Any]:
    return row_record(result.row(b))


def generate_batch(
    model: Any,
    tokenizer: Any,
    batch: list[Job],
    seed: int | None = None,
    on_pass: Callable[[], None] | None = None,
) -> Iterator[dict]:
    """Generate one batch, yielding each row's record (with its `id`) the moment the row is final.

    `on_pass` runs after every denoising pass: data-parallel ranks exchange rows and heartbeats there
    (batch_ranks.py), so a peer never waits longer than one pass for them."""
    overrides = batch[0].overrides
    from .api import stream_generate

    events = stream_generate(model, tokenizer, [job.ids for job in batch], seed=seed, **overrides)
    written = set()
    for event in events:
        if on_pass is not None and isinstance(event, PassEvent):
            on_pass()
        elif isinstance(event, CanvasEvent):
            for row in event.rows:
                written.add(row.index)
                yield {"id": batch[row.index].request.id, **row_record(row)}
        elif isinstance(event, FinishEvent):  # rows a stop request ended before their last canvas
            for b in sorted(set(range(len(batch))) - written):
                yield {"id": batch[b].request.id, **result_row(event.result, b)}


def run_batches(
    model: Any,
    tokenizer: Any,
    jobs: list[Job],
    writer: ResultWriter,
    batch_size: int = 4,
    seed: int | None = None,
    done: frozenset[str] | set[str] = frozenset(),
) -> Iterator[dict[str, Any]]:
    """Generate every job not in `done` (keys), writing each result as it completes; yields the written
    rows. `jobs` are all the runnable requests, done ones included, so the plan and its seeds match an
    uninterrupted run's: batches with nothing left are skipped, partly done ones rerun whole."""
    first = 0  # the plan position of the batch's first row: its rows are seeded seed + first + b
    for batch in plan_batches(jobs, batch_size):
        first += len(batch)
        if all(job.request.key in done for job in batch):
            continue
        shas = {job.request.key: job.request.prompt_sha for job in batch}
        batch_seed = None if seed is None else seed + first - len(batch)
        for row in generate_batch(model, tokenizer, batch, batch_seed):
            key = id_key(row["id"])
            if key in done:
                continue
            row = {"id": row["id"], "prompt_sha": shas[key], **{f: v for f, v in row.items() if f != "id"}}
            writer.write(row)
            yield row


class BatchRun:
    """A `dgemma batch` job from input file to output file: read, check, prepare, run, summarise.

    Reading and the output checks happen at construction, before any model is loaded, so a wrong
    path or a forgotten --resume costs nothing; `prepare` renders prompts with the loaded model's
    tokenizer and writes the errors file; `run` generates and writes.
    """

    def __init__(
        self,
        input_name: str,
        output: Path,
        fmt: str = "auto",
        resume: bool = False,
        errors: Path | None = None,
    ):
        self.output = Path(output).expanduser()
        self.errors_path = Path(errors).expanduser() if errors else errors_path_for(self.output)
        check_paths(input_name, self.output, self.errors_path)
        self.requests, self.bad = read_requests(open_input(input_name), fmt)
        if self.output.exists() and self.output.stat().st_size > 0 and not resume:
            raise DGemmaError(
                f"{self.output} already has results: pass --resume to continue it, or remove it"
            )
        written = completed_rows(self.output) if resume else {}
        check_resume(self.requests, written, self.output)
        self.done = set(written)
        self.todo = [r for r in self.requests if r.key not in self.done]
        self.jobs: list[Job] = []  # the jobs still to write
        self.all_jobs: list[Job] = []  # every runnable job, written ones included: the batch plan
        self.written = 0
        self.cut_short = 0

    @property
    def already_done(self) -> int:
        return len(self.requests) - len(self.todo)

    def prepare(
        self,
        model: Any,
        tokenizer: Any,
        overrides: dict[str, Any] | None = None,
        chat_template: bool = True,
        system: str | None = None,
    ) -> list[BadLine]:
        """Render every prompt; returns every line that cannot run (also written to the errors file).

        Requests already written are rendered too: the batch plan covers them (see the module docstring).
        """
        self.all_jobs, unrunnable = prepare(model, tokenizer, self.requests, overrides, chat_template, system)
        self.jobs = [job for job in self.all_jobs if job.request.key not in self.done]
        unrunnable = [b for b in unrunnable if id_key(b.id) not in self.done]
        self.bad = sorted(self.bad + unrunnable, key=lambda b: b.line)
        write_errors(self.errors_path, self.bad)
        return self.bad

    def run(self, model: Any, tokenizer: Any, batch_size: int = 4, seed: int | None = None) -> Iterator[dict]:
        """Generate the prepared jobs, appending and fsyncing each row as it completes; yields the rows."""
        with ResultWriter(self.output) as writer:
            for row in run_batches(model, tokenizer, self.all_jobs, writer, batch_size, seed, self.done):
                self.written = writer.written
                self.cut_short += not row["finished"]
                yield row

    def summary(self) -> str:
        text = f"{self.written} written to {self.output}"
        if self.cut_short:
            text += f' ({self.cut_short} stopped at the token budget: "finished": false)'
        if self.already_done:
            text += f", {self.already_done} already there"
        if self.bad:
            text += f", {len(self.bad)} malformed (listed in {self.errors_path})"
        return text


def open_input(name: str) -> Path | IO[str]:
    """`-` is stdin; anything else a path."""
    return sys.stdin if name == "-" else Path(name).expanduser()
