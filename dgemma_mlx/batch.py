"""Scripted batch generation: read prompts from a file, append each result the moment it completes.

Input is JSONL (`{"id": ..., "prompt": ...}` or `{"id": ..., "messages": [...]}`, optional generation
overrides per line) or plain text with one prompt per line (the id is the line number). Results are
appended to the output as JSONL and flushed to disk per batch, so a killed run loses at most the batch
in flight, and `resume` skips every id already written. Malformed lines are reported with their line
numbers and never stop the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import generate
from .errors import DGemmaError
from .generation_config import GenerationConfig

OVERRIDE_KEYS = {f for f in GenerationConfig.__dataclass_fields__}


@dataclass(frozen=True)
class Request:
    id: str
    prompt: Any  # text or chat messages
    overrides: dict[str, Any] = field(default_factory=dict)

    def override_key(self) -> str:
        return json.dumps(self.overrides, sort_keys=True)


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


def parse_line(text: str, line_no: int, jsonl: bool) -> Request | BadLine | None:
    text = text.strip()
    if not text:
        return None
    if not jsonl:
        return Request(id=str(line_no), prompt=text)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return BadLine(line_no, f"not valid JSON ({e.msg})")
    if not isinstance(row, dict):
        return BadLine(line_no, "expected a JSON object")
    if "id" not in row:
        return BadLine(line_no, "missing 'id'")
    has_prompt, has_messages = isinstance(row.get("prompt"), str), isinstance(row.get("messages"), list)
    if has_prompt == has_messages:
        return BadLine(line_no, "needs exactly one of 'prompt' (a string) or 'messages' (a list)")
    unknown = sorted(set(row) - {"id", "prompt", "messages"} - OVERRIDE_KEYS)
    if unknown:
        return BadLine(line_no, f"unknown field(s) {', '.join(unknown)}")
    overrides = {k: v for k, v in row.items() if k in OVERRIDE_KEYS}
    try:
        GenerationConfig().replace(**overrides)
    except DGemmaError as e:
        return BadLine(line_no, str(e))
    prompt = row["prompt"] if has_prompt else row["messages"]
    return Request(id=str(row["id"]), prompt=prompt, overrides=overrides)


def read_requests(path: Path) -> Iterator[Request | BadLine]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DGemmaError(f"{path}: no such input file") from None
    except UnicodeDecodeError:
        raise DGemmaError(f"{path}: not a UTF-8 text file") from None
    jsonl = path.suffix == ".jsonl" or (bool(lines) and lines[0].lstrip().startswith("{"))
    seen: set[str] = set()
    for number, text in enumerate(lines, start=1):
        item = parse_line(text, number, jsonl)
        if isinstance(item, Request):
            if item.id in seen:
                item = BadLine(number, f"duplicate id {item.id!r}")
            else:
                seen.add(item.id)
        if item is not None:
            yield item


def completed_ids(out: Path) -> set[str]:
    """Ids already in the output; a torn last line (killed mid-write) is ignored and rewritten."""
    if not out.exists():
        return set()
    done = set()
    for text in out.read_text().splitlines():
        try:
            done.add(str(json.loads(text)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def batches(requests: Iterable[Request], size: int) -> Iterator[list[Request]]:
    """Consecutive requests sharing generation overrides, at most `size` at a time."""
    current: list[Request] = []
    for request in requests:
        if current and (len(current) == size or current[0].override_key() != request.override_key()):
            yield current
            current = []
        current.append(request)
    if current:
        yield current


def append_results(out: Path, rows: list[dict]) -> None:
    """Whole lines only, flushed and fsynced, so what is on disk is always complete results."""
    with out.open("a", encoding="utf-8") as f:
        if f.tell() > 0:
            with out.open("rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    f.write("\n")  # a torn line from a killed run: start clean
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_batch(
    model,
    tokenizer,
    requests: list[Request],
    out: Path,
    batch_size: int = 4,
    seed: int | None = None,
    on_done: Callable[[list[dict]], None] | None = None,
) -> int:
    """Generate every request, appending results to `out` per batch; returns how many were written."""
    written = 0
    for k, group in enumerate(batches(requests, batch_size)):
        result = generate(
            model,
            tokenizer,
            [r.prompt for r in group],
            seed=None if seed is None else seed + k,
            **group[0].overrides,
        )
        rows = []
        for i, request in enumerate(group):
            stats = result.stats
            rows.append(
                {
                    "id": request.id,
                    "text": result.texts[i] if result.texts else "",
                    "tokens": result.new_tokens[i],
                    "finished": result.finished[i],
                    "passes": stats.passes[i],
                    "tokens_per_forward": stats.tokens_per_forward[i],
                }
            )
        append_results(out, rows)
        written += len(rows)
        if on_done is not None:
            on_done(rows)
    return written
