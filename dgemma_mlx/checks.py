"""Cheap run-time checks that turn silent wrong results into one-line errors."""

from __future__ import annotations

import mlx.core as mx

from .errors import DGemmaError


def finite_logits(logits: mx.array) -> None:
    """Refuse logits holding NaN or inf: corrupt weights (or an overflowing dtype) would otherwise
    give an empty or garbage answer and exit 0. One reduction, run on each canvas's first pass only."""
    if not mx.all(mx.isfinite(logits)).item():
        raise DGemmaError(
            "non-finite logits on the first pass: the weights contain NaN/inf or overflow in this dtype "
            "(reconvert or redownload the checkpoint)"
        )
