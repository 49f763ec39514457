"""Streaming conversion: read a slice of one source tensor, transform it, write it into place.

Memory is bounded by one slice (`ConvertOptions.chunk_bytes` of source data), not by the model, a
shard or even the largest tensor: the plan fixes every output tensor's byte range in advance, so
each shard's safetensors header is written first and each slice's results are written straight to
their final offsets. Slices are taken along axis 0, where quantization (groups run along the last
axis) acts row by row, and the public layout keeps every source tensor whole (a fused expert
`gate_up_proj` stays fused), so a sliced conversion is bit-identical to converting the whole tensor.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import mlx.core as mx
import numpy as np

from dgemma_mlx.errors import DGemmaError

from .layout import INDEX_FILE, OutTensor, Shard, index_json

if TYPE_CHECKING:
    from .plan import Plan, Unit

# How raw source bytes are viewed before becoming MLX arrays (numpy has no bfloat16).
RAW_NUMPY = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


class ShardWriter:
    """Writes tensors' bytes at their planned offsets and checks each tensor ends up exactly full."""

    def __init__(self, directory: Path, shards: list[Shard]):
        self.shards = shards
        self.fds: list[int] = []
        self.written: dict[str, int] = {}
        for shard in shards:
            fd = os.open(directory / shard.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self.fds.append(fd)
            os.pwrite(fd, shard.header, 0)

    def write(self, tensor: OutTensor, data: memoryview) -> None:
        done = self.written.get(tensor.name, 0)
        if done + data.nbytes > tensor.nbytes:
            raise DGemmaError(f"internal error: {tensor.name} overflows its planned {tensor.nbytes} bytes")
        fd, pos = self.fds[tensor.shard], tensor.offset + done
        while data.nbytes:  # pwrite may write less than asked
            n = os.pwrite(fd, data, pos)
            data, pos, done = data[n:], pos + n, done + n
        self.written[tensor.name] = done

    def finish(self) -> None:
        for shard, fd in zip(self.shards, self.fds, strict=True):
            for t in shard.tensors:
                if self.written.get(t.name, 0) != t.nbytes:
                    raise DGemmaError(
                        f"internal error: {t.name} got {self.written.get(t.name, 0)} of {t.nbytes} bytes"
                    )
            os.ftruncate(fd, shard.size)
            os.fsync(fd)
        self.close()

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class SourceReader:
    """Reads row slices of source tensors with plain positioned reads (no mmap, so no RSS growth)."""

    def __init__(self) -> None:
        self.files: dict[Path, BinaryIO] = {}

    def rows(self, unit: Unit, start: int, stop: int) -> mx.array:
        src = unit.source
        shape, row_bytes = src.shape or (1,), unit.row_bytes
        f = self.files.get(src.file)
        if f is None:
            f = self.files[src.file] = src.file.open("rb")
        buf = np.empty((stop - start) * row_bytes, dtype=np.uint8)
        f.seek(src.offset + start * row_bytes)
        if f.readinto(memoryview(buf)) != buf.nbytes:
            raise DGemmaError(f"{src.file}: ended early while reading {src.key} (file changed or truncated?)")
        arr = mx.array(
            buf.view(RAW_NUMPY[src.dtype]).reshape((stop - start, *shape[1:]) if src.shape else ())
        )
        return arr.view(mx.bfloat16) if src.dtype == "BF16" else arr

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


def as_bytes(a: mx.array) -> memoryview:
    """Row-major bytes of an evaluated array; bfloat16 goes through a uint16 view (numpy has no bf16)."""
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    return memoryview(np.ascontiguousarray(np.asarray(a))).cast("B")


def convert_unit(
    plan: Plan, unit: Unit, start: int, stop: int, reader: SourceReader, writer: ShardWriter
) -> None:
    """One slice: read, cast, quantize, write each result in place (the unit's one public-layout target)."""
    chunk = reader.rows(unit, start, stop)
    dtype = plan.options.out_dtype
    for target in unit.targets:
        value = chunk.astype(dtype)
        parts = mx.quantize(value, **target.quant) if target.quant else (value,)
        mx.eval(*parts)
        for part, out in zip(parts, target.outputs, strict=True):
            if math.prod(part.shape[1:]) != math.prod(out.shape[1:]) or part.dtype != out.dtype:
                raise DGemmaError(
                    f"internal error: {out.name} slice is {part.shape} {part.dtype}, planned {out.shape}"
                )
            writer.write(out, as_bytes(part))
        del value, parts
    del chunk
    mx.clear_cache()  # keep MLX's buffer cache from growing across slices


def write_shards(plan: Plan, directory: Path, advance: Callable[[int], None] = lambda n: None) -> None:
    """Stream every unit of the plan into `directory`'s shards; `advance(source_bytes)` reports progress."""
    reader = SourceReader()
    writer = ShardWriter(directory, plan.shards)
    try:
        for unit in plan.units:
            for start, stop in unit.chunks():
                convert_unit(plan, unit, start, stop, reader, writer)
                advance((stop - start) * unit.row_bytes)
        writer.finish()
        (directory / INDEX_FILE).write_text(json.dumps(index_json(plan.shards), indent=2) + "\n")
    finally:
        reader.close()
        writer.close()
