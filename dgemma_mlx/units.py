"""How sizes and counts read in every report: `dgemma info`, `convert --dry-run`, progress lines.

Decimal units throughout (1 GB = 10^9 bytes), as disks and model sizes are advertised, so the
figures match what a user sees in a file manager or on a model card.
"""

from __future__ import annotations

_BYTE_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))
_COUNT_UNITS = (("B", 1e9), ("M", 1e6), ("K", 1e3))


def fmt_bytes(n: float) -> str:
    """`512 B`, `1.50 KB` ... `15.40 GB`: two decimals once a unit above bytes applies."""
    for unit, scale in _BYTE_UNITS:
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_count(n: int) -> str:
    """`3.84B`, `12.50M`, `640`: parameter counts, with no space (they read as one token)."""
    for unit, scale in _COUNT_UNITS:
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)
