"""The output's safetensors layout: every tensor's dtype, shape, shard and byte offset, fixed up front.

Shared by the planner (which lays the shards out before reading a byte), the streaming writer (which
writes each slice at its planned offset) and the verifier (which checks the headers it reads back).
It lives on its own so those modules import it, and not each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import mlx.core as mx

INDEX_FILE = "model.safetensors.index.json"
SAFETENSORS_DTYPES = {
    mx.bfloat16: "BF16",
    mx.float16: "F16",
    mx.float32: "F32",
    mx.uint32: "U32",
    mx.uint8: "U8",
    mx.int8: "I8",
    mx.int32: "I32",
}


@dataclass
class OutTensor:
    """One tensor in the output; `shard` and `offset` (absolute in the shard file) are set by the layout."""

    name: str
    dtype: mx.Dtype
    shape: tuple[int, ...]
    nbytes: int
    shard: int = -1
    offset: int = -1


@dataclass(frozen=True)
class Shard:
    filename: str
    tensors: tuple[OutTensor, ...]
    header: bytes

    @property
    def size(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def layout_shards(outputs: list[OutTensor], max_shard_bytes: int) -> list[Shard]:
    """Pack outputs in order into shards of at most `max_shard_bytes` and fix every tensor's offset."""
    groups: list[list[OutTensor]] = [[]]
    size = 0
    for t in outputs:
        if groups[-1] and size + t.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    n = len(groups)
    shards = []
    for i, group in enumerate(groups):
        name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        header = header_bytes(group)
        offset = len(header)
        for t in group:
            t.shard, t.offset = i, offset
            offset += t.nbytes
        shards.append(Shard(name, tuple(group), header))
    return shards


def header_bytes(tensors: list[OutTensor]) -> bytes:
    """The 8-byte length and JSON header of a safetensors file holding `tensors` back to back."""
    entries: dict[str, object] = {"__metadata__": {"format": "mlx"}}
    begin = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [begin, begin + t.nbytes],
        }
        begin += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the safetensors library writes it
    return len(raw).to_bytes(8, "little") + raw


def index_json(shards: list[Shard]) -> dict:
    """`model.safetensors.index.json`: total size and which shard holds each tensor."""
    weight_map = {t.name: shard.filename for shard in shards for t in shard.tensors}
    return {
        "metadata": {"total_size": sum(t.nbytes for s in shards for t in s.tensors)},
        "weight_map": weight_map,
    }
