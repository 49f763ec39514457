"""Tiny random models with real tokenizers, for tests and for benchmarks that run without real weights."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlx.core as mx
from gemma4_assets import gemma4_tokenizer_dir
from mlx.utils import tree_flatten
from tiny_geometry import TINY_GEOMETRY

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.model import Model

CHAT_CONFIG = {
    "model_type": "diffusion_gemma",
    "canvas_length": 8,
    "text_config": {
        **TINY_GEOMETRY,
        "vocab_size": 262144,
        "sliding_window": 4,
    },
}
GENERATION = {"max_new_tokens": 8, "max_denoising_steps": 4, "eos_token_id": [1, 106, 50], "pad_token_id": 0}


def tiny_chat_model(path: Path | None = None, **generation) -> Path:
    """The test suite's tiny random model with the real Gemma 4 vocabulary and chat template."""
    path = Path(path or tempfile.mkdtemp(prefix="dgemma-bench-"))
    for f in gemma4_tokenizer_dir().iterdir():
        shutil.copy(f, path / f.name)
    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(CHAT_CONFIG))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(CHAT_CONFIG))
    (path / "generation_config.json").write_text(json.dumps({**GENERATION, **generation}))
    return path
