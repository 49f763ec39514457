"""Shared fixtures: tiny random checkpoints written by transformers' `save_pretrained`."""

import pytest
from hf_reference import write_tiny_checkpoint
from tiny_models import SHARPEN, tiny_chat_model, word_chat_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Float32, real key layout, prompt-length > sliding window possible (W=4, L=8)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def sharp_checkpoint(tmp_path_factory):
    """Embedding x SHARPEN (8) so acceptance and adaptive stopping actually trigger."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("sharp"), seed=1, embed_multiplier=SHARPEN)


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """A random tiny model with the real 262,144-id Gemma 4 vocabulary and a Gemma 4 chat template."""
    return tiny_chat_model(tmp_path_factory.mktemp("chat"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The 128-word tiny chat model (`tiny_models.word_chat_model`) the CLI tests run; read, never written."""
    return word_chat_model(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    """`load(model_dir)`: the word-level model and its tokenizer."""
    from dgemma_mlx import load

    return load(model_dir)
