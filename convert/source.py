"""The checkpoint to convert: a local HF-format directory or a hub repo id, checked before any work starts.

Everything that can be wrong with a source (missing shard, truncated file, bad config, a tensor in a
dtype we cannot read) is found here, from the safetensors headers alone, so a bad source fails in a
second with one line and never leaves a half-written output behind. Tensor data is not read here: the
streaming writer reads it later, one slice at a time, at the offsets recorded in `SourceTensor`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.loading import resolve_model_path, safetensors_header, weight_files

# Source dtypes we can stream (safetensors code -> bytes per element). The released checkpoint is
# bf16; derivatives exist in fp16, and tiny test checkpoints are fp32.
READABLE_DTYPES = {"BF16": 2, "F16": 2, "F32": 4}
# Files carried over next to the weights, when the source has them.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)


@dataclass(frozen=True)
class SourceTensor:
    """Where one tensor's bytes live: `offset` is absolute in `file`, data is little-endian row-major."""

    key: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class SourceCheckpoint:
    """A validated source: its config, every tensor's location, and the side files to copy."""

    directory: Path
    config: ModelConfig
    tensors: dict[str, SourceTensor]
    side_files: tuple[Path, ...]

    @property
    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def dtypes(self) -> list[str]:
        return sorted({t.dtype for t in self.tensors.values()})


def resolve_source(source: str) -> Path:
    """A local directory, or a hub id fetched with only the files conversion needs."""
    try:
        return resolve_model_path(source)
    except DGemmaError as e:
        if "Hugging Face Hub" in str(e):
            raise DGemmaError(
                f"{e} (e.g. `huggingface-cli download {source} --local-dir DIR`, "
                "then `dgemma convert DIR -o OUT`)"
            ) from None
        raise


def open_source(source: str | Path) -> SourceCheckpoint:
    """Resolve and validate a source checkpoint from its config and safetensors headers."""
    directory = resolve_source(str(source))
    config = ModelConfig.from_file(directory / "config.json")
    if config.quantization or config.raw.get("quantization_config"):
        raise DGemmaError(
            f"{directory / 'config.json'}: this checkpoint is already quantized; "
            "convert from the original bf16/fp16/fp32 Hugging Face checkpoint"
        )
    GenerationConfig.from_model_dir(directory)  # a broken generation_config.json fails now, not at load
    tensors: dict[str, SourceTensor] = {}
    for path, listed in weight_files(directory).items():
        for tensor in _shard_tensors(path, listed):
            if tensor.key in tensors:
                raise DGemmaError(
                    f"{path}: tensor {tensor.key} also appears in {tensors[tensor.key].file.name}"
                )
            tensors[tensor.key] = tensor
    side = tuple(directory / name for name in SIDE_FILES if (directory / name).is_file())
    return SourceCheckpoint(directory=directory, config=config, tensors=tensors, side_files=side)


def _shard_tensors(path: Path, listed: list[str] | None) -> list[SourceTensor]:
    try:
        return _parse_shard(path, listed)
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ) as e:  # a header that parses as JSON but is wrong
        raise DGemmaError(f"{path}: malformed safetensors header ({type(e).__name__}: {e})") from None


def _parse_shard(path: Path, listed: list[str] | None) -> list[SourceTensor]:
    header = safetensors_header(path)  # also catches truncation
    for key in listed or ():
        if key not in header:
            raise DGemmaError(f"{path}: missing tensor {key} (listed in the index)")
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    data_start = 8 + header_len
    out = []
    for key, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype, shape = entry.get("dtype"), tuple(int(d) for d in entry.get("shape", ()))
        begin, end = (int(x) for x in entry["data_offsets"])
        if dtype not in READABLE_DTYPES:
            raise DGemmaError(
                f"{path}: tensor {key} is stored as {dtype}; convert reads BF16, F16 or F32 only"
            )
        if end - begin != math.prod(shape) * READABLE_DTYPES[dtype]:
            raise DGemmaError(f"{path}: tensor {key} has {end - begin} bytes for shape {list(shape)} {dtype}")
        out.append(SourceTensor(key, path, dtype, shape, data_start + begin, end - begin))
    return out
