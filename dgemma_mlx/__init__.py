"""dgemma-mlx: Google's DiffusionGemma block-diffusion model on MLX.

Data flow: prompt -> tokens (`tokenizer`) -> encoder cache (`model.encode`, `cache`) -> canvas passes
(`engine`, `sampler`, `noise`) -> events (`events`) -> views and outputs (the `dgemma` CLI).

The public names below are imported on first use (PEP 562): the model code pulls in mlx-lm and, through
its tokenizer helpers, transformers, which cost seconds; `dgemma --help`, usage errors and the CLI's
own light modules should not pay that.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import generate, prompt_to_ids, stream_generate
    from .errors import DGemmaError
    from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent
    from .generation_config import GenerationConfig
    from .loading import load
    from .noise import MLXNoise, TapeNoise

_EXPORTS = {
    "CanvasEvent": "events",
    "DGemmaError": "errors",
    "FinishEvent": "events",
    "GenerationConfig": "generation_config",
    "GenerationResult": "events",
    "MLXNoise": "noise",
    "PassEvent": "events",
    "TapeNoise": "noise",
    "generate": "api",
    "load": "loading",
    "prompt_to_ids": "api",
    "stream_generate": "api",
}
__all__ = [
    "CanvasEvent",
    "DGemmaError",
    "FinishEvent",
    "GenerationConfig",
    "GenerationResult",
    "MLXNoise",
    "PassEvent",
    "TapeNoise",
    "generate",
    "load",
    "prompt_to_ids",
    "stream_generate",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
