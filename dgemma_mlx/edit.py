"""Editing a span of a file in place: the span rewritten from an instruction, the rest of the file as context.

The model reads the instruction and the whole file (the span marked) through the checkpoint's chat
template, and its answer canvas starts from the span's current text (`canvas_init`, the reference's
`decoder_input_ids`) instead of noise: diffusion refines what is there, so a live view shows the old
text turning into the new. The answer is the new span; the rest of the file is kept byte for byte
(line endings included: the span's own newline style is applied to the new text).

The span is given as lines (`parse_lines`, checked before a model loads). Reading, the binary
check, the changed-on-disk check and the atomic replace live in `textfile.py`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DGemmaError
from .textfile import TextFile

if TYPE_CHECKING:  # events pull in numpy: the command checks its input before paying for that
    from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent

_LINES = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")
_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")
_FENCE = re.compile(r"\A```[^\n]*\n(.*?)\n?```\s*\Z", re.DOTALL)
PROMPT = (
    "Rewrite lines {first}-{last} of the file `{name}` as the instruction says. Reply with the new "
    "text of those lines only: no explanation, no code fence.\n\n"
    "Instruction: {instruction}\n\n"
    "The file, with the lines to rewrite between {open} and {close}:\n"
    "{before}{open}\n{span}{close}\n{after}"
)
OPEN_MARK, CLOSE_MARK = "<<<EDIT", "EDIT>>>"


def split_lines(text: str) -> list[str]:
    """Lines as editors, `diff` and `patch` count them: ended by `\\n` only, each with its ending.

    Not `str.splitlines`, which also breaks at form feeds, `\\x85` and `\\u2028` and would put
    `--lines` off by as many lines as a file has of those.
    """
    return _LINE.findall(text)


def parse_lines(spec: str) -> tuple[int, int]:
    """`A-B` (or `A`): a 1-based, inclusive line range with A <= B."""
    match = _LINES.fullmatch(spec)
    if not match:
        raise DGemmaError(f"--lines {spec!r}: write A-B (1-based, inclusive), e.g. --lines 3-7")
    first = int(match.group(1))
    last = int(match.group(2) or first)
    if first < 1 or last < first:
        raise DGemmaError(
            f"--lines {spec!r}: the range must start at 1 or later and not end before it starts"
        )
    return first, last


@dataclass(frozen=True)
class Span:
    """A file split around lines first..last (1-based, inclusive), each part with its newlines."""

    before: str
    text: str
    after: str
    first: int
    last: int

    @property
    def newline(self) -> str:
        """The span's newline style: `\\r\\n` when its first line ends so, else `\\n`."""
        lines = split_lines(self.text)
        return "\r\n" if lines and lines[0].endswith("\r\n") else "\n"

    def replaced(self, new: str) -> str:
        return self.before + new + self.after


def split_span(text: str, first: int, last: int, name: str = "the file") -> Span:
    """Cut `text` at lines first..last; a range past the end of the file is a one-line error."""
    lines = split_lines(text)
    if last > len(lines):
        raise DGemmaError(f"{name} has {len(lines)} lines: --lines {first}-{last} is past its end")
    return Span(
        "".join(lines[: first - 1]), "".join(lines[first - 1 : last]), "".join(lines[last:]), first, last
    )


def clean_answer(answer: str, old: str, newline: str) -> str:
    """The model's answer as span text: one surrounding code fence dropped, blank lines around it
    trimmed, the old span's newline style and its final newline (or its lack) kept."""
    match = _FENCE.match(answer.strip())
    new = match.group(1) if match else answer
    new = new.strip("\r\n").replace("\r\n", "\n")
    if not new:
        return ""  # the span is deleted
    if old.endswith(("\n", "\r")):
        new += "\n"
    return new.replace("\n", newline) if newline != "\n" else new


def unified_diff(old: str, new: str, name: str) -> str:
    """`diff -u` of two versions of a file, as `a/NAME` and `b/NAME` (what `patch -p1` applies)."""
    lines = difflib.unified_diff(
        split_lines(old), split_lines(new), f"a/{name}", f"b/{name}"
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


@dataclass(frozen=True)
class EditStart:
    """The first event of an edit: the ids the canvas starts from (the span's current text)."""

    first: int
    last: int
    ids: list[int]


@dataclass(frozen=True)
class EditResult:
    """The rewritten file and how it came about."""

    source: TextFile
    span: Span
    new_span: str
    generation: GenerationResult

    @property
    def new_text(self) -> str:
        return self.span.replaced(self.new_span)

    @property
    def cut_short(self) -> bool:
        """The rewrite hit the token budget before the model ended it: it may be missing its end."""
        return self.generation.finish_reasons[0] == "length"

    def diff(self) -> str:
        return unified_diff(self.source.text, self.new_text, self.source.path.as_posix().lstrip("/"))


def edit_prompt(source: TextFile, span: Span, instruction: str) -> str:
    """The user turn: the instruction and the whole file, the span between markers."""
    body = span.text if span.text.endswith(("\n", "\r")) else span.text + "\n"
    return PROMPT.format(
        first=span.first,
        last=span.last,
        name=source.path.name,
        instruction=instruction,
        open=OPEN_MARK,
        close=CLOSE_MARK,
        before=span.before,
        span=body,
        after=span.after,
    )


def default_budget(span_tokens: int) -> int:
    """Room for the rewrite: the old span's length and half again, at least 64 tokens."""
    return max(64, span_tokens + span_tokens // 2)


def edit_stream(
    model: Any,
    tokenizer: Any,
    source: TextFile,
    span: Span,
    instruction: str,
    **kwargs: Any,
) -> Iterator[EditStart | PassEvent | CanvasEvent | FinishEvent | EditResult]:
    """`EditStart`, the generation's events (through the front door, the canvas starting from the
    span's tokens), then the `EditResult`. `kwargs` go to `stream_generate` (seed, noise, generation
    parameters); `max_new_tokens` defaults to `default_budget` of the span."""
    from .api import stream_generate
    from .events import FinishEvent

    if tokenizer is None:
        raise DGemmaError("this model ships no tokenizer: it cannot read a file")
    start = tokenizer.encode(span.text, add_special_tokens=False)
    kwargs.setdefault("max_new_tokens", default_budget(len(start)))
    if kwargs["max_new_tokens"] is None:
        kwargs["max_new_tokens"] = default_budget(len(start))
    L = model.canvas_length
    start = start[: -(-kwargs["max_new_tokens"] // L) * L]  # a start never longer than the run
    prompt = edit_prompt(source, span, instruction)
    yield EditStart(span.first, span.last, start)
    for event in stream_generate(model, tokenizer, prompt, canvas_init=start or None, **kwargs):
        yield event
        if isinstance(event, FinishEvent):
            result = event.result
            new = clean_answer(result.answers[0], span.text, span.newline)
            yield EditResult(source, span, new, result)


def edit(
    model: Any, tokenizer: Any, source: TextFile, span: Span, instruction: str, **kwargs: Any
) -> EditResult:
    """Run `edit_stream` to the end and return the `EditResult` (nothing is written)."""
    final = None
    for event in edit_stream(model, tokenizer, source, span, instruction, **kwargs):
        if isinstance(event, EditResult):
            final = event
    assert final is not None
    return final
