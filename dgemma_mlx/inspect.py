"""A model directory at a glance, without loading its weights (headers and config only)."""

from __future__ import annotations

from pathlib import Path

from .config import FULL, ModelConfig, estimate_runtime_bytes, parameter_counts
from .loading import resolve_model_path, safetensors_header, weight_files


def describe(path_or_repo: str | Path) -> str:
    model_dir = resolve_model_path(path_or_repo)
    config = ModelConfig.from_file(model_dir / "config.json")
    t = config.text
    files = weight_files(model_dir)
    for f in files:
        safetensors_header(f)
    size = sum(f.stat().st_size for f in files)
    counts = parameter_counts(t)
    q = config.quantization
    quant = f"{q.get('bits')}-bit {q.get('mode', 'affine')}, group {q.get('group_size')}" if q else "none"
    runtime = estimate_runtime_bytes(t, config.canvas_length, context=4096)
    full = [i for i, lt in enumerate(t.layer_types) if lt == FULL]
    lines = [
        f"model       {model_dir}",
        f"geometry    {t.num_hidden_layers} layers (full attention at {full}), hidden {t.hidden_size}, "
        f"{t.num_attention_heads} heads, vocab {t.vocab_size}",
        f"experts     {t.num_experts} x {t.moe_intermediate_size}, top-{t.top_k_experts}, "
        f"dense MLP {t.intermediate_size}",
        f"canvas      {config.canvas_length} tokens, sliding window {t.sliding_window}",
        f"parameters  {counts['total'] / 1e9:.3f}B total, {counts['active'] / 1e9:.3f}B active per token",
        f"quantized   {quant}",
        f"on disk     {size / 1e9:.2f} GB in {len(files)} file(s)",
        f"memory      ~{(size + runtime) / 1e9:.2f} GB (weights + working set at a 4k context)",
    ]
    return "\n".join(lines)
