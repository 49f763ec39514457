"""Which layers each pipeline rank holds, and what that costs it in memory: plain data from the config
and the safetensors headers, so `dgemma info --pipeline N` and the memory guard read no weights.

Ranks hold contiguous slices in order (rank 0 the first layers, the last rank the last), the lower
ranks one more layer when the count does not divide (mlx-lm's even split). Every rank also holds what
is not a layer: the embedding (tied to the head: every rank computes the logits, see pipeline.py),
the final norm and the self-conditioning MLP. Working memory: every rank runs the sampler on the
whole [B, L, V] logits, so that part is not divided; the KV cache is, by the layers held.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SLIDING, ModelConfig, TextConfig
from .errors import DGemmaError

LONE_PROCESS = (
    "--pipeline splits the model over the processes of `mlx.launch` "
    "(e.g. `mlx.launch -n 2 --backend ring -- dgemma generate --pipeline ...`); this is a lone process"
)
LAYER_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_split(num_layers: int, size: int) -> list[range]:
    """Contiguous layer ranges, rank 0 first; the low ranks get the extra layers."""
    if size < 1:
        raise DGemmaError(f"a pipeline needs at least 1 rank, not {size}")
    if size > num_layers:
        raise DGemmaError(f"{size} pipeline ranks need {size} layers or more; the model has {num_layers}")
    base, extra = divmod(num_layers, size)
    ranges, start = [], 0
    for r in range(size):
        end = start + base + (1 if r < extra else 0)
        ranges.append(range(start, end))
        start = end
    return ranges


def layer_of(key: str) -> int | None:
    """The layer a checkpoint tensor belongs to (`...layers.N....`), None for shared tensors."""
    m = LAYER_KEY.search(key)
    return int(m.group(1)) if m else None


def kv_bytes(text: TextConfig, layers: range, canvas_length: int, context: int, batch: int = 1) -> int:
    """The encoder cache of `layers` at `context` tokens, plus one canvas (bf16), as config.py counts it."""
    total = 0
    for i in layers:
        d, k = text.head_dims[i], text.kv_heads[i]
        tokens = min(context, text.sliding_window - 1) if text.layer_types[i] == SLIDING else context
        total += 2 * batch * k * d * (tokens + canvas_length) * 2
    return total


def sampler_bytes(text: TextConfig, canvas_length: int, batch: int = 1) -> int:
    """The float32 [B, L, V] temporaries of one pass's sampler (config.estimate_runtime_bytes's count)."""
    return 6 * batch * canvas_length * text.vocab_size * 4


@dataclass(frozen=True)
class RankShare:
    """One rank's slice and its memory estimate (weights as stored + working set)."""

    rank: int
    layers: range
    weight_bytes: int
    working_bytes: int

    @property
    def memory_bytes(self) -> int:
        return self.weight_bytes + self.working_bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "layers": list(self.layers),
            "weight_bytes": self.weight_bytes,
            "working_bytes": self.working_bytes,
            "memory_bytes": self.memory_bytes,
        }


def rank_shares(
    headers: dict[str, dict[str, Any]], config: ModelConfig, size: int, context: int
) -> list[RankShare]:
    """Per-rank estimates from the checkpoint's headers: shared tensors on every rank, layer tensors
    on the rank holding the layer; tensors the text model never reads are left out."""
    from .layout import is_ignored

    text = config.text
    split = layer_split(text.num_hidden_layers, size)
    shared = 0
    per_layer = [0] * text.num_hidden_layers
    for key, entry in headers.items():
        if key == "__metadata__" or is_ignored(key):
            continue
        nbytes = int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
        layer = layer_of(key)
        if layer is None or not 0 <= layer < len(per_layer):
            shared += nbytes
        else:
            per_layer[layer] += nbytes
    sampler = sampler_bytes(text, config.canvas_length)
    return [
        RankShare(
            rank=r,
            layers=layers,
            weight_bytes=shared + sum(per_layer[i] for i in layers),
            working_bytes=sampler + kv_bytes(text, layers, config.canvas_length, context),
        )
        for r, layers in enumerate(split)
    ]


def model_shares(model_dir: Path, size: int, context: int) -> list[RankShare]:
    """`rank_shares` for a model directory, from its config and headers alone."""
    from .loading import safetensors_header, weight_files

    config = ModelConfig.from_file(Path(model_dir) / "config.json")
    headers: dict[str, dict[str, Any]] = {}
    for f in weight_files(Path(model_dir)):
        headers.update(safetensors_header(f))
    return rank_shares(headers, config, size, context)


def check_share_fits(model_dir: Path, share: RankShare, size: int, force: bool = False) -> None:
    """The memory guard for one rank: its share against what this machine can give (memory.py's
    figures); a refusal says how many ranks would fit, or `--force`."""
    from . import memory
    from .units import fmt_bytes

    have = None if force else memory.available_memory_bytes()
    if have is None or share.memory_bytes <= have:
        return
    raise DGemmaError(
        f"{model_dir}: pipeline rank {share.rank} of {size} (layers {share.layers.start}-"
        f"{share.layers.stop - 1}) needs ~{fmt_bytes(share.memory_bytes)} (weights "
        f"{fmt_bytes(share.weight_bytes)} + working memory {fmt_bytes(share.working_bytes)}) but this "
        f"machine can give {fmt_bytes(have)}; add machines (`dgemma info --pipeline N` shows each share), "
        "or pass --force to load it anyway"
    )


def format_shares(shares: list[RankShare], context: int) -> str:
    """`dgemma info --pipeline N`'s rows: each rank's layers and memory."""
    from .units import fmt_bytes

    rows = []
    for s in shares:
        first, last = s.layers.start, s.layers.stop - 1
        layers = f"layer {first}" if first == last else f"layers {first}-{last}"
        rows.append(
            f"{'rank ' + str(s.rank):<11s} {layers}: ~{fmt_bytes(s.memory_bytes)} "
            f"(weights {fmt_bytes(s.weight_bytes)} + working set {fmt_bytes(s.working_bytes)})"
        )
    head = f"{'pipeline':<11s} {len(shares)} ranks under mlx.launch, at a {context // 1024}k-token context"
    return "\n".join([head, *rows])
