"""The one tiny DiffusionGemma geometry every test model shares (spec §8.1 sizes).

Kept in one place so the HF-parity checkpoints, the real-vocabulary chat model and the word-level
CLI model stay the same shape: a bug that only one size exposes then shows up in every suite.
Vocabulary, layer types, window and special ids differ per model and are set where each is built.
"""

TINY_GEOMETRY = {
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
}
