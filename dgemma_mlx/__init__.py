"""dgemma-mlx: Google's DiffusionGemma block-diffusion model on MLX.

Data flow: prompt -> tokens (`tokenizer`) -> encoder cache (`model.encode`, `cache`) -> canvas passes
(`engine`, `sampler`, `noise`) -> events (`events`) -> views and outputs (the `dgemma` CLI).
"""

from .api import generate, prompt_to_ids, stream_generate
from .errors import DGemmaError
from .events import CanvasEvent, FinishEvent, GenerationResult, PassEvent
from .generation_config import GenerationConfig
from .loading import load
from .noise import MLXNoise, TapeNoise

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
