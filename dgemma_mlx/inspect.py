"""A model directory at a glance, without loading its weights (config and safetensors headers only).

`dgemma info` prints `format_summary(summarize(path))`; `--json` prints the dict itself. Reading
headers rather than weights keeps this instant even for a 50 GB checkpoint, and still catches a
truncated shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import ModelConfig, parameter_counts
from .generation_config import GenerationConfig
from .jsonfile import read_json_object_or_empty
from .layout import is_ignored, is_vision
from .loading import resolve_model_path, safetensors_header, weight_files
from .memory import CONTEXT_FOR_ESTIMATE, tensor_bytes, working_bytes
from .quantization import stored_params, weight_class
from .tokenizer import has_tokenizer
from .units import fmt_bytes, fmt_count


def has_chat_template(model_dir: Path) -> bool:
    """A chat_template.jinja, or a template inside tokenizer_config.json (older checkpoints)."""
    if (model_dir / "chat_template.jinja").exists():
        return True
    return "chat_template" in read_json_object_or_empty(model_dir / "tokenizer_config.json")


def quantization_by_class(headers: dict[str, dict[str, Any]], block: dict[str, Any] | None) -> dict[str, str]:
    """How each weight class is stored, from the files: a matrix with `.scales` is quantized (with the
    parameters `load` would use: its per-module entry, else the top-level defaults), one without is
    float. Vision tensors are left out: the text model never loads them."""
    block = block or {}
    defaults = {k: block[k] for k in ("group_size", "bits", "mode") if k in block}
    storage: dict[str, set[str]] = {}
    for key in headers:
        path, _, leaf = key.rpartition(".")
        if leaf != "weight" or is_ignored(key) or len(headers[key]["shape"]) < 2:
            continue
        cls = weight_class(path)
        if cls == "other":
            continue
        label = "float"
        if f"{path}.scales" in headers:
            entry = block.get(path)
            p = stored_params(entry if isinstance(entry, dict) else defaults)
            label = f"{p['bits']}-bit {p['mode']} g{p['group_size']}"
        storage.setdefault(cls, set()).add(label)
    return {cls: ", ".join(sorted(labels)) for cls, labels in storage.items()}


def vision_tensors(headers: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The vision tower's tensor count and bytes on disk (present in multimodal conversions, never loaded)."""
    keys = [k for k in headers if is_vision(k)]
    return {
        "tensors": len(keys),
        "bytes": sum(int(headers[k]["data_offsets"][1]) - int(headers[k]["data_offsets"][0]) for k in keys),
    }


def summarize(path_or_repo: str | Path) -> dict[str, Any]:
    """Geometry, parameter counts, quantization, size on disk and a memory estimate, as plain data."""
    model_dir = resolve_model_path(path_or_repo)
    config = ModelConfig.from_file(model_dir / "config.json")
    t = config.text
    files = list(weight_files(model_dir))
    headers: dict[str, dict[str, Any]] = {}
    for f in files:
        headers.update(safetensors_header(f))  # raises on a truncated or corrupt shard
    size = sum(f.stat().st_size for f in files)
    counts = parameter_counts(t)
    q = config.quantization or config.raw.get("quantization_config") or None
    return {
        "model_dir": str(model_dir),
        "layers": t.num_hidden_layers,
        "full_attention_layers": list(t.full_layers),
        "hidden_size": t.hidden_size,
        "attention_heads": t.num_attention_heads,
        "head_dims": sorted(set(t.head_dims)),
        "vocab_size": t.vocab_size,
        "experts": t.num_experts,
        "experts_per_token": t.top_k_experts,
        "expert_size": t.moe_intermediate_size,
        "dense_mlp_size": t.intermediate_size,
        "canvas_length": config.canvas_length,
        "sliding_window": t.sliding_window,
        "parameters_total": counts["total"],
        "parameters_active": counts["active"],
        "quantization": q,
        "quantization_by_class": quantization_by_class(headers, q),
        "vision_tower": vision_tensors(headers),
        "weight_files": len(files),
        "size_on_disk_bytes": size,
        "estimated_memory_bytes": tensor_bytes(headers) + working_bytes(config),
        "tokenizer": has_tokenizer(model_dir),
        "chat_template": has_chat_template(model_dir),
        "generation": GenerationConfig.from_model_dir(model_dir).to_dict(),
    }


def format_summary(s: dict[str, Any]) -> str:
    by_class = s["quantization_by_class"]
    quant = "none"
    if s["quantization"]:
        quant = "; ".join(f"{cls} {storage}" for cls, storage in by_class.items())
    vision = s["vision_tower"]
    vision_row = "none"
    if vision["tensors"]:
        vision_row = f"present ({vision['tensors']} tensors, {fmt_bytes(vision['bytes'])}), not loaded"
    g = s["generation"]
    tokenizer = ("yes" if s["tokenizer"] else "none") + (", chat template" if s["chat_template"] else "")
    rows = [
        ("model", s["model_dir"]),
        (
            "geometry",
            f"{s['layers']} layers (full attention at {s['full_attention_layers']}), "
            f"hidden {s['hidden_size']}, "
            f"{s['attention_heads']} heads (dims {s['head_dims']}), vocab {s['vocab_size']}",
        ),
        (
            "experts",
            f"{s['experts']} x {s['expert_size']}, top-{s['experts_per_token']} per token, "
            f"dense MLP {s['dense_mlp_size']}",
        ),
        ("canvas", f"{s['canvas_length']} tokens, sliding window {s['sliding_window']}"),
        (
            "parameters",
            f"{fmt_count(s['parameters_total'])} total, "
            f"{fmt_count(s['parameters_active'])} active per token",
        ),
        ("quantized", quant),
        ("vision", vision_row),
        ("on disk", f"{fmt_bytes(s['size_on_disk_bytes'])} in {s['weight_files']} file(s)"),
        (
            "memory",
            f"~{fmt_bytes(s['estimated_memory_bytes'])} "
            f"(weights + working set at a {CONTEXT_FOR_ESTIMATE // 1024}k-token context)",
        ),
        ("tokenizer", tokenizer),
        (
            "defaults",
            f"max_new_tokens {g['max_new_tokens']}, steps {g['max_denoising_steps']}, "
            f"entropy_bound {g['entropy_bound']}, T {g['t_max']}→{g['t_min']}",
        ),
    ]
    return "\n".join(f"{name:<11s} {value}" for name, value in rows)
