"""Chat in pipeline mode: rank 0 holds the conversation, the other ranks follow it turn by turn.

Every rank runs the same engine on its own stage of the model (pipeline.py), so every rank must
start each turn from the same state: the history, system prompt, thinking switch, generation
parameters and whether the encoder cache is continued. Rank 0 (the REPL, slash commands and all)
sends that state with the user's text before each turn (`distributed.from_root`), and a follower
sets its own session to it and runs the turn; the answers then agree token for token without further
messages. The session's noise stream advances identically on every rank because every rank runs
every turn. A digest of the cached token ids is compared, so a follower whose cache drifted stops
with one line instead of deadlocking the pipeline on prompts of other lengths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from .distributed import Ranks, from_root
from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, PassEvent
from .generation_config import GenerationConfig
from .session import ChatSession

Event = PassEvent | CanvasEvent | FinishEvent


def _cache_digest(session: ChatSession) -> str | None:
    if session._cache is None:
        return None
    return hashlib.sha256(json.dumps(session._cached_ids).encode()).hexdigest()


def turn_state(session: ChatSession, user_text: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a follower needs to run the same turn as rank 0."""
    return {
        "text": user_text,
        "overrides": overrides,
        "messages": session.messages,
        "system": session.system,
        "enable_thinking": session.enable_thinking,
        "config": session.config.to_dict(),
        "cache": _cache_digest(session),
    }


def apply_state(session: ChatSession, state: dict[str, Any], ranks: Ranks) -> None:
    """Set a follower's session to rank 0's state before a turn."""
    session.messages = state["messages"]
    session.system = state["system"]
    session.enable_thinking = state["enable_thinking"]
    session.config = GenerationConfig.from_dict(state["config"])
    if state["cache"] is None:
        session._cache, session._cached_ids = None, []
    elif _cache_digest(session) != state["cache"]:
        raise DGemmaError(f"{ranks.name()}: its conversation cache differs from rank 0's (out of step)")


class SharedSession:
    """Rank 0's ChatSession, which tells the followers each turn before running it; otherwise the
    session itself (attributes read and set through)."""

    def __init__(self, session: ChatSession, ranks: Ranks):
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_ranks", ranks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._session, name, value)

    def stream(self, user_text: str, noise: Any = None, **overrides: Any) -> Iterator[Event]:
        if noise is not None:
            raise DGemmaError("a pipelined chat draws from the session's own noise stream")
        state = turn_state(self._session, user_text, overrides)
        from_root(self._ranks, json.dumps(state).encode())
        yield from self._session.stream(user_text, **overrides)

    def close(self) -> None:
        """Tell the followers the conversation is over."""
        from_root(self._ranks, b"")


def follow(session: ChatSession, ranks: Ranks) -> int:
    """A follower's loop: run each turn rank 0 announces until it closes; returns the turns run."""
    turns = 0
    while payload := from_root(ranks, None):
        state = json.loads(payload)
        apply_state(session, state, ranks)
        for _ in session.stream(state["text"], **state["overrides"]):
            pass
        turns += 1
    return turns
