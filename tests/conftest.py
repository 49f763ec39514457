"""Shared fixtures: tiny random checkpoints written by transformers' `save_pretrained`."""

import json
import shutil

import mlx.core as mx
import pytest
from gemma4_assets import gemma4_tokenizer_dir
from hf_reference import write_tiny_checkpoint
from mlx.utils import tree_flatten

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.model import Model

CHAT_CONFIG = {
    "model_type": "diffusion_gemma",
    "canvas_length": 8,
    "text_config": {
        "vocab_size": 262144,
        "hidden_size": 32,
        "intermediate_size": 48,
        "moe_intermediate_size": 16,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "global_head_dim": 16,
        "num_global_key_value_heads": 1,
        "num_experts": 4,
        "top_k_experts": 2,
        "sliding_window": 4,
    },
}
GENERATION = {"max_new_tokens": 8, "max_denoising_steps": 4, "eos_token_id": [1, 106, 50], "pad_token_id": 0}




@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Float32, real key layout, prompt-length > sliding window possible (W=4, L=8)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def sharp_checkpoint(tmp_path_factory):
    """Embedding x8 so acceptance and adaptive stopping actually trigger (spec §8.2)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sharp"), seed=1, embed_multiplier=8.0)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """A random tiny model with the real 262,144-id Gemma 4 vocabulary and a Gemma 4 chat template."""
    path = tmp_path_factory.mktemp("chat")
    for f in gemma4_tokenizer_dir().iterdir():
        shutil.copy(f, path / f.name)
    mx.random.seed(0)
    model = Model(ModelConfig.from_dict(CHAT_CONFIG))
    mx.save_safetensors(str(path / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (path / "config.json").write_text(json.dumps(CHAT_CONFIG))
    (path / "generation_config.json").write_text(json.dumps(GENERATION))
    return path
