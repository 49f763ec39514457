"""HF checkpoint -> MLX conversion, streaming one tensor at a time.

Import arrows run one way: `source` and `layout` (the output's safetensors layout) under `plan`,
then `stream` (writes a plan), `output` (stages, verifies, renames) and `api`; `progress` and `report`
only render. `convert` and `dry_run` (in `api`) are the public entry points; they are imported on first
use (PEP 562) because the pipeline pulls in MLX, which `dgemma convert --help` must not pay for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import DryRun, convert, dry_run, plan_conversion
    from .output import ConvertResult

_EXPORTS = {
    "convert": "api",
    "dry_run": "api",
    "plan_conversion": "api",
    "DryRun": "api",
    "ConvertResult": "output",
}
__all__ = ["ConvertResult", "DryRun", "convert", "dry_run", "plan_conversion"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
