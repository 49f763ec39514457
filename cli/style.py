"""One colour rule for every live view (the text canvas and the Sudoku board).

A position's colour says what happened to it on this pass, its brightness how sure the model is of
the token shown, so a user who learned the text view can read the board at a glance:
green = accepted this pass, yellow = still noise (rejected, its prediction moved), cyan = rejected but
unchanged since the last pass. Pinned positions (a puzzle's givens) are drawn in `PINNED`.
"""

from __future__ import annotations

from rich.text import Text

ACCEPTED, NOISE, STABLE = "accepted", "noise", "stable"
STYLES = {
    # state -> (confident, middling, unsure)
    ACCEPTED: ("bold green", "green", "dim green"),
    NOISE: ("bold yellow", "yellow", "dim yellow"),
    STABLE: ("bold cyan", "cyan", "dim cyan"),
}
PINNED = "bold white"
CONFIDENT, MIDDLING = 0.9, 0.4  # probability of the shown token at which brightness steps down


def position_state(accepted: bool, changed: bool) -> str:
    if accepted:
        return ACCEPTED
    return NOISE if changed else STABLE


def position_style(accepted: bool, changed: bool, confidence: float) -> str:
    """Colour by state, brightness by the probability of the shown token."""
    confident, middling, unsure = STYLES[position_state(accepted, changed)]
    if confidence >= CONFIDENT:
        return confident
    return middling if confidence >= MIDDLING else unsure


def legend(pinned: str | None = None) -> Text:
    """The key under a live view; `pinned` names the pinned positions where a view has them."""
    parts: list[str | tuple[str, str]] = [(pinned, PINNED), " · "] if pinned else []
    parts += [("accepted", "green"), " · ", ("still noise", "yellow"), " · ", ("unchanged", "cyan")]
    return Text.assemble(*parts, ("  (brighter = more confident)", "dim"))
