"""The bundled Sudoku model's definition: its config.json and generation_config.json as code.

Here, in the package, because `load()` needs the grid RoPE to read the shipped checkpoint and the solver
needs the shipped sampler settings; the training scripts (`training/sudoku/`, not installed) size new
models from these and write them next to every checkpoint they save.
"""

from __future__ import annotations

import math

from ..config import DEFAULT_ROPE, FULL, SLIDING
from . import tokens as T


def grid_rope(head_dim: int) -> dict:
    """Linear-scaled RoPE whose frequencies are 2*pi/9 * (4, 2, 1, 1/2, 1/4, ...) radians per position.

    Why: the model has no position embeddings, only RoPE, and with the default frequencies (1, 0.56,
    0.32, ... rad) "same column" (an offset that is a multiple of 9) has no simple form, so a small model
    learns the Sudoku constraints slowly and never precisely. With these frequencies one head can score
    cos(2pi*d/9) + cos(4pi*d/9) + cos(8pi*d/9), which is 3 at offsets d = 0 mod 9 and <= 0 elsewhere: a
    column comb; the slower ones can give rows and the prompt-to-canvas offset. Theta 2^(head_dim/2) makes
    each frequency half the one before; the factor (< 1, which transformers warns about but computes
    exactly as we do) lifts the fastest to 8pi/9. How much faster it learns: training/sudoku/TRAINING.md,
    "Run 5".
    """
    return {"rope_type": "linear", "rope_theta": 2.0 ** (head_dim // 2), "factor": 9 / (8 * math.pi)}


def rope_parameters(sliding_head_dim: int) -> dict:
    """Both layer types spelled out, as transformers needs once `rope_parameters` is given: the grid RoPE
    on the sliding layers, the default one on the full-attention layer (the grid there did worse)."""
    return {SLIDING: grid_rope(sliding_head_dim), FULL: dict(DEFAULT_ROPE[FULL])}


SLIDING_HEAD_DIM = 32  # one value: the grid RoPE's theta is derived from it
MODEL_CONFIG = {
    "model_type": "diffusion_gemma",
    "architectures": ["DiffusionGemmaForBlockDiffusion"],
    "canvas_length": T.CANVAS_LENGTH,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "diffusion_gemma_text",
        "vocab_size": T.VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": SLIDING_HEAD_DIM,
        "global_head_dim": 64,
        "num_global_key_value_heads": 1,
        "num_experts": 4,
        "top_k_experts": 2,
        "sliding_window": 256,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        "max_position_embeddings": 1024,
        "pad_token_id": T.PAD,
        "bos_token_id": T.BOS,
        "eos_token_id": T.EOS,
        "use_bidirectional_attention": "vision",
        "rope_parameters": rope_parameters(SLIDING_HEAD_DIM),
    },
}

# <eos> never appears in a solved canvas, so a solution is never cut short by EOS padding.
GENERATION_CONFIG = {
    "max_new_tokens": T.CANVAS_LENGTH,
    "max_denoising_steps": 48,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "t_min": 0.8,
    "t_max": 1.2,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "eos_token_id": [T.EOS],
    "pad_token_id": T.PAD,
}
