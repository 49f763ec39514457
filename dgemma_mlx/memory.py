"""The load-time memory guard: refuse, in one line, a model this machine cannot hold, before a byte of
weights is read, instead of letting the OS swap a laptop into the ground.

Need: the bytes of the tensors loading maps (as stored; a vision tower is never read) plus the
working set of one denoising pass at a 4k-token context (`config.estimate_runtime_bytes`), the figure
`dgemma models` shows. Have: on Metal, the GPU's recommended working set (past it, Metal pages);
elsewhere, the RAM the kernel says is available. When neither is known the guard stays out of the way.
The refusal names a smaller conversion that would fit, or `--force`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import ModelConfig, TextConfig, estimate_runtime_bytes, estimate_weight_bytes
from .errors import DGemmaError
from .units import fmt_bytes

CONTEXT_FOR_ESTIMATE = 4096
# Smaller conversions to suggest, smallest last: (convert flags, expert bits, other bits).
SMALLER_CONVERSIONS: tuple[tuple[str, float, float], ...] = (
    ("--recipe mixed --bits 4", 4, 8),
    ("--recipe uniform --bits 4", 4, 4),
    ("--recipe uniform --bits 3", 3, 3),
    ("--recipe uniform --bits 2", 2, 2),
)


def weight_bytes_on_disk(model_dir: Path) -> int:
    """Bytes of the directory's *.safetensors files (symlinks into the HF cache followed)."""
    return sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors") if f.is_file())


def tensor_bytes(header: Mapping[str, Any]) -> int:
    """Bytes of the tensors in a safetensors header that loading maps.

    What the text model never reads (vision tower, rotary tables: `layout.is_ignored`) is left out, so a
    public checkpoint that ships a vision tower is not charged for it.
    """
    from .layout import is_ignored

    return sum(
        int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
        for key, entry in header.items()
        if key != "__metadata__" and not is_ignored(key)
    )


def loaded_weight_bytes(model_dir: Path) -> int:
    """Bytes of the tensors loading maps, from the safetensors headers alone.

    The shards are the ones loading reads (`loading.weight_files`: names checked to stay inside the
    model), so the guard never reads a file loading would refuse; a shard whose header cannot be read
    counts whole (loading reports it), and a directory loading would refuse counts nothing.
    """
    from .loading import safetensors_header, weight_files

    try:
        shards = weight_files(Path(model_dir))
    except DGemmaError:
        return 0
    total = 0
    for f in shards:
        try:
            total += tensor_bytes(safetensors_header(f))
        except DGemmaError:
            total += f.stat().st_size
    return total


def working_bytes(config: ModelConfig) -> int:
    """Memory beyond the weights: one denoising pass at CONTEXT_FOR_ESTIMATE cached tokens."""
    return estimate_runtime_bytes(config.text, config.canvas_length, context=CONTEXT_FOR_ESTIMATE)


def estimate_memory_bytes(model_dir: Path, config: ModelConfig) -> int:
    """The weights loading maps plus the working set: what loading and one generation will ask for."""
    return loaded_weight_bytes(model_dir) + working_bytes(config)


def available_memory_bytes() -> int | None:
    """What this machine can give a model now; None when it cannot be told.

    Metal first (unified memory, and the recommended working set is where paging starts), touched
    only when Metal is there; then /proc/meminfo's MemAvailable; then sysconf's available pages.
    """
    metal = _metal_working_set()
    if metal is not None:
        return metal
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _metal_working_set() -> int | None:
    try:
        import mlx.core as mx

        if not mx.metal.is_available():
            return None
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        size = info.get("max_recommended_working_set_size")
        return int(size) if size else None
    except Exception:  # no MLX, no Metal, an older MLX: the RAM figures still apply
        return None


def smaller_conversion(
    text: TextConfig, extra: int, current_weights: int, have: int, source: str = "SOURCE"
) -> str | None:
    """The first of SMALLER_CONVERSIONS that is smaller than what is loaded now and fits in `have`."""
    for flags, bits, other in SMALLER_CONVERSIONS:
        weights = estimate_weight_bytes(text, bits, other)
        if weights < current_weights and weights + extra <= have:
            return f"`dgemma convert {source} {flags}` (~{fmt_bytes(weights + extra)})"
    return None


def check_fits(model_dir: Path, config: ModelConfig | None = None, force: bool = False) -> None:
    """Raise a one-line DGemmaError when the model will not fit, unless `force`."""
    if force:
        return
    have = available_memory_bytes()
    if have is None:
        return
    config = config or ModelConfig.from_file(Path(model_dir) / "config.json")
    weights, extra = loaded_weight_bytes(model_dir), working_bytes(config)
    need = weights + extra
    if need <= have:
        return
    # A float checkpoint is itself the source to convert; a quantized one came from elsewhere.
    source = "SOURCE" if config.quantization else str(model_dir)
    suggestion = smaller_conversion(config.text, extra, weights, have, source)
    fix = f"convert a smaller copy with {suggestion}" if suggestion else "no smaller conversion fits either"
    raise DGemmaError(
        f"{model_dir}: needs ~{fmt_bytes(need)} (weights {fmt_bytes(weights)} + working memory "
        f"{fmt_bytes(extra)}) but this machine can give {fmt_bytes(have)}; {fix}, "
        "or pass --force to load it anyway (expect heavy swapping)"
    )
