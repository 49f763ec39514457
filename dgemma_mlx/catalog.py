"""The DiffusionGemma checkpoints this machine already has: in the Hugging Face cache and in dgemma's
own models folder (where `dgemma convert` writes by default).

Only `config.json` and file sizes are read, never weights, so listing a shelf of 50 GB checkpoints is
instant. `dgemma models` prints `list_models()`; the memory figure is `memory.estimate_memory_bytes`,
the same one the load-time guard compares with what the machine can give.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .config import MODEL_TYPE, ModelConfig
from .errors import DGemmaError
from .jsonfile import read_json_object_or_empty

HOME_ENV = "DGEMMA_HOME"


def models_home() -> Path:
    """$DGEMMA_HOME, else $XDG_CACHE_HOME/dgemma, else ~/.cache/dgemma (created by whoever writes there)."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dgemma"


@dataclass(frozen=True)
class CatalogEntry:
    """One checkpoint: what to pass to --model, how it is stored, and what it costs."""

    name: str
    source: str  # "hf-cache" or "dgemma-home"
    quantization: str
    size_on_disk_bytes: int
    estimated_memory_bytes: int | None
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_quantization(quantization: dict[str, Any] | None) -> str:
    """`4-bit affine, mixed`, `mxfp4, uniform`, or `float`: the recipe read back from the per-layer map.

    convert writes no recipe name, but the embedding tells it: quantized at the top-level bits
    (uniform), at 8 bits under a lower top level (mixed), or left in float (experts-only).
    """
    if not quantization:
        return "float"
    bits, mode = quantization.get("bits"), quantization.get("mode", "affine")
    head = f"{bits}-bit {mode}" if mode == "affine" else str(mode)
    embed = next((v for k, v in quantization.items() if k.endswith("embed_tokens")), None)
    if embed is False:
        return f"{head}, experts-only"
    if isinstance(embed, dict) and embed.get("bits") not in (None, bits):
        return f"{head}, mixed"
    return f"{head}, uniform"


def _diffusion_config(model_dir: Path) -> dict[str, Any] | None:
    """The directory's config.json when it is a DiffusionGemma one; None for anything else."""
    raw = read_json_object_or_empty(model_dir / "config.json")  # the shared reader: no FIFO hangs it
    return raw if raw.get("model_type") == MODEL_TYPE else None


def _entry(name: str, source: str, model_dir: Path, raw: dict[str, Any]) -> CatalogEntry:
    from .memory import estimate_memory_bytes, weight_bytes_on_disk

    try:
        memory: int | None = estimate_memory_bytes(model_dir, ModelConfig.from_dict(raw, str(model_dir)))
    except (DGemmaError, KeyError, TypeError, ValueError):
        memory = None  # a config we list but cannot size; loading it will say why
    return CatalogEntry(
        name=name,
        source=source,
        quantization=describe_quantization(raw.get("quantization")),
        size_on_disk_bytes=weight_bytes_on_disk(model_dir),
        estimated_memory_bytes=memory,
        path=str(model_dir),
    )


def _hf_cache_entries(cache_dir: Path) -> list[CatalogEntry]:
    """One entry per cached model repo whose main (else newest) snapshot is a DiffusionGemma."""
    if not cache_dir.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache_dir)
    except Exception:  # an unreadable cache is an empty shelf here, not a failed command
        return []
    entries = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revisions = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
        snapshot = Path(revisions[0].snapshot_path)
        raw = _diffusion_config(snapshot)
        if raw is not None:
            entries.append(_entry(repo.repo_id, "hf-cache", snapshot, raw))
    return entries


def _home_entries(home: Path) -> list[CatalogEntry]:
    """Every DiffusionGemma directory directly inside the models folder, listed by its folder name."""
    if not home.is_dir():
        return []
    entries = []
    for child in sorted(home.iterdir()):
        raw = _diffusion_config(child) if child.is_dir() else None
        if raw is not None:
            entries.append(_entry(child.name, "dgemma-home", child, raw))
    return entries


def list_models(cache_dir: Path | None = None, home: Path | None = None) -> list[CatalogEntry]:
    """The models folder's checkpoints, then the Hugging Face cache's, each sorted by name."""
    from .hub import hub_cache_dir

    return _home_entries(home or models_home()) + _hf_cache_entries(cache_dir or hub_cache_dir())
