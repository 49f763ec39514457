"""Live views of in-place generation: an infill (fixed text among changing holes) and an edit (old text
turning into new). Both are the generic `LiveView` (header, committed text, throttled redraw) with one
change each, driven by the extra first event their library stream sends (`InfillPlan`, `EditStart`).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from dgemma_mlx.edit import EditStart
from dgemma_mlx.infill import InfillPlan

from .style import legend, position_style
from .view import LiveView, printable

FIXED = "default"  # fixed text is drawn plain: only the holes carry the state colours


class InfillView(LiveView):
    """Fixed positions plain, hole positions coloured by their state; the prompt's text shown above."""

    def __init__(self, console: Console, tokenizer: Any):
        super().__init__(console, tokenizer, "dgemma infill")
        self.plan: InfillPlan | None = None
        self.fixed: dict[int, list[bool]] = {}

    def handle(self, event: Any) -> None:
        if isinstance(event, InfillPlan):
            self.plan = event
            self.committed_text = printable(event.prefix, keep_newlines=True)
            return
        super().handle(event)
        if self.plan is not None and self.committed_ids:  # the prompt's text stays above the canvases
            prefix = printable(self.plan.prefix, keep_newlines=True)
            self.committed_text = prefix + self._decode(self.committed_ids)

    def canvas(self, event: Any) -> Text:
        if self.plan is None:
            return super().canvas(event)
        fixed = self.fixed.setdefault(event.canvas_index, self.plan.is_fixed(event.canvas_index))
        states = zip(
            self.pieces(event.draft[0]),
            fixed,
            event.accepted[0],
            event.changed[0],
            event.confidence[0],
            strict=True,
        )
        styled = [
            Text(piece, style=FIXED if pinned else position_style(bool(a), bool(c), float(p)))
            for piece, pinned, a, c, p in states
        ]
        return Text(self.pieces.separator or "").join(styled)

    def frame(self, event: Any) -> RenderableType:
        parts = list(super().frame(event).renderables)  # type: ignore[attr-defined]
        parts[-1] = Text.assemble(("fixed text plain", FIXED), " · ", legend())
        return Group(*parts)


class EditView(LiveView):
    """Draws the span's old text as the canvas before the first pass, so the change is seen from the start."""

    def __init__(self, console: Console, tokenizer: Any):
        super().__init__(console, tokenizer, "dgemma edit")

    def handle(self, event: Any) -> None:
        if isinstance(event, EditStart):
            header = Text.assemble(
                (f" {self.title} ", "bold reverse"),
                f" lines {event.first}-{event.last} · the canvas starts here",
            )
            pieces = self.pieces(event.ids)  # first: it also learns how pieces are separated
            old = Text(self.pieces.separator or "").join(Text(p, style="dim") for p in pieces)
            self.live.update(Group(header, old, legend()), refresh=True)
            return
        super().handle(event)


def make_span_view(kind: str, console: Console, tokenizer: Any, live: type[LiveView]) -> Any:
    """`live` on a terminal (or when asked), else the generic plain or silent view."""
    from .view import make_view

    if kind == "live" or (kind == "auto" and console.is_terminal):
        return live(console, tokenizer)
    return make_view("plain" if kind == "auto" else kind, console, tokenizer)
