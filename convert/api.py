"""The conversion library's entry points: `dry_run` says what a conversion would do, `convert` does it.

Both take the settings a user gives `dgemma convert`, validate them (`ConvertOptions.resolve`), check
the source from its headers (`open_source`) and build the exact plan (`build_plan`) before any tensor
data is read; `convert` then streams the plan into OUT, which appears only once complete and verified.
The command itself only parses, calls one of these and prints the result.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .output import ConvertResult, convert_checkpoint, destination_notes
from .plan import ConvertOptions, Plan, build_plan, recipe_sizes
from .source import open_source

# Called once the plan is known, before any byte is read: returns a context manager that yields
# `advance(n_source_bytes)` (`progress.byte_progress(plan.read_bytes, ...)` is one).
Progress = Callable[[Plan], AbstractContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class DryRun:
    """What `--dry-run` reports: the plan, each recipe's output size, and what OUT would need."""

    plan: Plan
    recipe_sizes: dict[str, int]
    destination_notes: list[str]

    @property
    def notes(self) -> list[str]:
        """The plan's warnings, then the destination's (refusal, disk space)."""
        return [*self.plan.notes(), *self.destination_notes]


def plan_conversion(source: str | Path, options: ConvertOptions | None = None) -> Plan:
    """Check the source (local directory or hub id) and plan every output tensor under `options`."""
    return build_plan(open_source(source), options or ConvertOptions())


def dry_run(source: str | Path, output: str | Path, *, force: bool = False, **settings: Any) -> DryRun:
    """Everything a conversion would do and need, without writing anything.

    `settings` are `convert`'s (`ConvertOptions.resolve`'s: bits, group_size, mode, dtype, quantize,
    recipe).
    """
    plan = plan_conversion(source, ConvertOptions.resolve(**settings))
    return DryRun(plan, recipe_sizes(plan.source, plan.options), destination_notes(plan, Path(output), force))


def convert(
    source: str | Path,
    output: str | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
    **settings: Any,
) -> ConvertResult:
    """Convert a Hugging Face DiffusionGemma checkpoint to MLX in OUT, in bounded memory.

    `settings` are `ConvertOptions.resolve`'s, the one place they are defined and checked: `bits` and
    `group_size` (default 4/64, fixed by the mxfp4/mxfp8/nvfp4 modes), `mode`, `dtype` of what stays
    unquantized, `quantize=False` to keep every weight in `dtype`, `recipe`. An existing OUT is replaced
    only with `force`. Raises `DGemmaError` (one line) for anything wrong with the settings, the source
    or the destination; on any failure, Ctrl-C included, nothing is left under OUT's name.
    """
    plan = plan_conversion(source, ConvertOptions.resolve(**settings))
    with progress(plan) if progress is not None else nullcontext(lambda n: None) as advance:
        return convert_checkpoint(plan, Path(output), force, advance)
