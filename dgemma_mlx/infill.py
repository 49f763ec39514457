"""Infilling: a template's holes denoised in place, its fixed text pinned (ARCHITECTURE.md, "Infill").

A template is text with holes, `[[fill]]` or `[[fill:N]]` (N tokens; the markers are configurable so
they never collide with the user's own text). The canvas is bidirectional, so the text on both sides
of a hole shapes it: the fixed text is tokenized and pinned (`fixed_positions`, the same path the
Sudoku solver's givens take), and only the holes' positions are sampled. A hole of N tokens is filled
with up to N: positions the model gives to padding or end-of-text tokens drop out of its text.

Layout of one generation: the text before the first hole goes to the encoder as the prompt (or, with
`prefix_in_prompt=False`, onto the canvas, pinned), then the rest of the template runs on as many
canvases as reach the end of the last hole. A canvas sees the canvases before it but not those after,
so text past the last hole's canvas cannot shape any hole: it is not generated, only copied. The
tail of the last canvas, when the template ends inside it, is pinned to end-of-text and padding.

The output keeps the template's text byte for byte outside the holes: the fixed text is copied from
the template, never decoded back from tokens. Parsing is plain Python, so the command checks a
template before it loads a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DGemmaError

if TYPE_CHECKING:  # events pull in numpy: the command checks its input before paying for that
    from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent

OPEN, CLOSE = "[[fill", "]]"
DEFAULT_HOLE_TOKENS = 16  # a phrase or a short line of code; `[[fill:N]]` asks for more
_SIZE = re.compile(r":([+-]?[0-9]+)")


@dataclass(frozen=True)
class Hole:
    """One hole of a template: where its marker sits in the text, and how many tokens it may take."""

    index: int
    start: int  # character offset of the marker in the template
    end: int  # one past the marker's last character
    tokens: int


@dataclass(frozen=True)
class Template:
    """A parsed template: `pieces` alternates fixed text and holes, in order."""

    text: str
    pieces: tuple[str | Hole, ...]

    @property
    def holes(self) -> list[Hole]:
        return [p for p in self.pieces if isinstance(p, Hole)]

    def fill(self, texts: Sequence[str]) -> str:
        """The template with hole k replaced by `texts[k]`; every other character as given."""
        return "".join(p if isinstance(p, str) else texts[p.index] for p in self.pieces)


def _where(text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return f"line {line}, column {column}"


def parse_template(
    text: str, open_marker: str = OPEN, close_marker: str = CLOSE, default_tokens: int = DEFAULT_HOLE_TOKENS
) -> Template:
    """Split `text` at its holes: `OPEN CLOSE` (default size) or `OPEN:N CLOSE` (N >= 1 tokens).

    Strict on purpose: an opening marker that is not a well-formed hole (unclosed, a size that is not a
    positive integer, other text before the close) is an error naming its line and column, never text
    silently kept; a template without a hole is an error too. Raises a one-line `DGemmaError`.
    """
    if not open_marker or not close_marker:
        raise DGemmaError("the hole markers must not be empty")
    if default_tokens < 1:
        raise DGemmaError(f"the default hole size must be at least 1 token (got {default_tokens})")
    pieces: list[str | Hole] = []
    cursor = index = 0
    while (start := text.find(open_marker, cursor)) >= 0:
        body_start = start + len(open_marker)
        close = text.find(close_marker, body_start)
        marker = f"{open_marker}{close_marker}"
        if close < 0:
            raise DGemmaError(f"{_where(text, start)}: {open_marker} is not closed by {close_marker}")
        body = text[body_start:close]
        if body == "":
            size = default_tokens
        elif sized := _SIZE.fullmatch(body):
            size = int(sized.group(1))
            if size <= 0:
                raise DGemmaError(f"{_where(text, start)}: a hole needs at least 1 token (got {size})")
        else:
            shown = text[start : close + len(close_marker)]
            raise DGemmaError(
                f"{_where(text, start)}: {shown!r} is not a hole: write {marker} or "
                f"{open_marker}:N{close_marker} with N tokens (other markers: --open/--close)"
            )
        pieces.append(text[cursor:start])
        end = close + len(close_marker)
        pieces.append(Hole(index, start, end, size))
        index += 1
        cursor = end
    pieces.append(text[cursor:])
    if index == 0:
        raise DGemmaError(f"the template has no hole: mark one with {open_marker}{close_marker}")
    return Template(text, tuple(p for p in pieces if p != ""))


@dataclass(frozen=True)
class InfillPlan:
    """A template laid out for one generation: prompt ids, pinned positions, and where each hole sits."""

    prompt: list[int]
    fixed: dict[int, int]  # generated position -> pinned id
    holes: list[tuple[int, int]]  # per hole: first position, number of positions
    canvases: int
    canvas_length: int
    prefix: str  # the template text that went to the encoder (shown above the live canvas)

    def is_fixed(self, canvas_index: int) -> list[bool]:
        """Per position of one canvas: whether it is pinned (for views)."""
        base = canvas_index * self.canvas_length
        return [base + i in self.fixed for i in range(self.canvas_length)]


def plan_infill(
    template: Template,
    tokenizer: Any,
    canvas_length: int,
    end_ids: tuple[int, int],
    prefix_in_prompt: bool = True,
) -> InfillPlan:
    """Tokenize the fixed text piece by piece and lay the template out over canvases.

    `end_ids` is (end-of-text id, pad id): what the positions after the template's end are pinned to.
    The prompt starts with the tokenizer's `<bos>` when it has one; a template that starts with a hole,
    for a tokenizer without `<bos>`, has no prompt and is refused.
    """
    pieces = list(template.pieces)
    prefix = ""
    if prefix_in_prompt and isinstance(pieces[0], str):
        prefix = pieces.pop(0)
    bos = tokenizer.bos_token_id
    prompt = ([bos] if bos is not None else []) + (
        tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
    )
    if not prompt:
        raise DGemmaError(
            "the tokenizer has no <bos> and the template starts with a hole: put text before it"
        )
    sequence: list[int | None] = []  # None: a hole's position
    holes: list[tuple[int, int]] = []
    for piece in pieces:
        if isinstance(piece, Hole):
            holes.append((len(sequence), piece.tokens))
            sequence += [None] * piece.tokens
        else:
            sequence += tokenizer.encode(piece, add_special_tokens=False)
    last = max(start + size for start, size in holes)
    canvases = -(-last // canvas_length)
    span = canvases * canvas_length
    sequence = sequence[:span]  # text after the last hole's canvas is copied, not generated
    if len(sequence) < span:
        eos, pad = end_ids
        sequence += [eos] + [pad] * (span - len(sequence) - 1)
    fixed = {i: t for i, t in enumerate(sequence) if t is not None}
    return InfillPlan(prompt, fixed, holes, canvases, canvas_length, prefix)


@dataclass(frozen=True)
class FilledHole:
    index: int
    text: str
    tokens: list[int]  # every position of the hole, padding included
    passes: int  # denoising passes run on the canvas(es) holding the hole

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "text": self.text, "tokens": self.tokens, "passes": self.passes}


@dataclass(frozen=True)
class InfillResult:
    """The filled template, each hole's text and passes, and the generation's own result."""

    text: str
    holes: list[FilledHole]
    generation: GenerationResult

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `dgemma infill --json` prints."""
        return {
            "text": self.text,
            "holes": [h.to_dict() for h in self.holes],
            "stats": self.generation.stats.to_dict(),
        }


def _end_ids(tokenizer: Any, model: Any, overrides: dict[str, Any]) -> tuple[int, int]:
    """(end-of-text, pad) for the positions after the template: the checkpoint's own ids."""
    from .api import resolve_config

    config = resolve_config(model, tokenizer, None, **overrides)
    pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
    pad = 0 if pad is None else pad
    eos = tokenizer.eos_token_ids if getattr(tokenizer, "eos_token_ids", None) else config.eos_token_id
    return (min(eos) if eos else pad), pad


def infill_stream(
    model: Any,
    tokenizer: Any,
    template: Template,
    *,
    seed: int | None = None,
    noise: Any = None,
    prefix_in_prompt: bool = True,
    stop_requested: Any = None,
    **overrides: Any,
) -> Iterator[InfillPlan | PassEvent | CanvasEvent | FinishEvent | InfillResult]:
    """The `InfillPlan` (so a view knows which positions are fixed), the generation's events (through
    the front door), then the `InfillResult` (none when `stop_requested` ended the run early).

    `overrides` are generation parameters (`max_denoising_steps`, `entropy_bound`, ...); the token
    budget and the end-of-text ids are the template's to set: every canvas up to the last hole runs,
    whatever the holes contain.
    """
    from .api import stream_generate
    from .events import CanvasEvent, FinishEvent

    if "max_new_tokens" in overrides or "eos_token_id" in overrides:
        raise DGemmaError("an infill's length comes from its template: no max_new_tokens or eos_token_id")
    L = model.canvas_length
    plan = plan_infill(template, tokenizer, L, _end_ids(tokenizer, model, overrides), prefix_in_prompt)
    events = stream_generate(
        model,
        tokenizer,
        plan.prompt,
        seed=seed,
        noise=noise,
        stop_requested=stop_requested,
        fixed_positions=plan.fixed,
        max_new_tokens=plan.canvases * L,
        eos_token_id=[],  # a hole's end-of-text must not end the run: the template goes on
        **overrides,
    )
    yield plan
    passes: list[int] = []
    for event in events:
        if isinstance(event, CanvasEvent):
            passes.append(event.passes)
        yield event
        if isinstance(event, FinishEvent) and len(passes) == plan.canvases:
            yield _result(template, plan, event.result, passes, tokenizer)


def _result(
    template: Template, plan: InfillPlan, result: GenerationResult, passes: list[int], tokenizer: Any
) -> InfillResult:
    generated = result.sequences[0, result.sequences.shape[1] - plan.canvases * plan.canvas_length :]
    L = plan.canvas_length
    holes = []
    for k, (start, size) in enumerate(plan.holes):
        ids = [int(t) for t in generated[start : start + size]]
        spent = sum(passes[c] for c in range(start // L, (start + size - 1) // L + 1) if c < len(passes))
        holes.append(FilledHole(k, tokenizer.decode(ids, skip_special_tokens=True), ids, spent))
    return InfillResult(template.fill([h.text for h in holes]), holes, result)


def infill(model: Any, tokenizer: Any, template: Template | str, **kwargs: Any) -> InfillResult:
    """Fill a template (parsed with the default markers when given as text) and return the result."""
    if isinstance(template, str):
        template = parse_template(template)
    final = None
    for event in infill_stream(model, tokenizer, template, **kwargs):
        if isinstance(event, InfillResult):
            final = event
    if final is None:  # stopped before the end: no canvas to read holes from
        raise DGemmaError("the infill stopped before its last canvas")
    return final
