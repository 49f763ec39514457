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
from dgemma_mlx.hub import download_command
from dgemma_mlx.jsonfile import open_regular, read_json_object
from dgemma_mlx.loading import checked_model_file, resolve_model_path, safetensors_header, weight_files

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
# Side files that must hold one JSON object (the rest: chat_template.jinja, parsed as Jinja, and the
# binary tokenizer.model, copied as is).
JSON_SIDE_FILES = tuple(name for name in SIDE_FILES if name.endswith(".json"))


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
                f"{e} (e.g. `{download_command()} {source} --local-dir DIR`, "
                "then `dgemma convert DIR -o OUT`)"
            ) from None
        raise


def open_source(source: str | Path) -> SourceCheckpoint:
    """Resolve and validate a source checkpoint from its config and safetensors headers."""
    directory = resolve_source(str(source))
    config = read_config(directory / "config.json")
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
    side = present_side_files(directory)
    check_side_files(directory)
    return SourceCheckpoint(directory=directory, config=config, tensors=tensors, side_files=side)


def read_config(path: Path) -> ModelConfig:
    """config.json as a `ModelConfig`; a value of the wrong type (`num_hidden_layers: "four"`,
    `layer_types: 5`) is one line naming the file, like every other config problem."""
    try:
        return ModelConfig.from_file(path)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise DGemmaError(f"{path}: malformed config ({type(e).__name__}: {first})") from None


def present_side_files(directory: Path) -> tuple[Path, ...]:
    """The side files this checkpoint has, each a regular file inside it (`checked_model_file`)."""
    names = [n for n in SIDE_FILES if (directory / n).exists() or (directory / n).is_symlink()]
    return tuple(checked_model_file(directory, name) for name in names)


def check_side_files(directory: Path) -> None:
    """The tokenizer and template files are what they claim to be: each JSON side file one JSON
    object, tokenizer.json one the tokenizers library can load, and every chat template
    (chat_template.jinja, or the one inside tokenizer_config.json or chat_template.json) parses as
    Jinja. Run on the source before any work and on the output before its rename, so a corrupt one
    is one line and never a finished-looking conversion."""
    for path in present_side_files(directory):
        if path.name in JSON_SIDE_FILES:
            data = read_json_object(path, invalid="corrupt (not valid JSON)")
            if path.name in ("tokenizer_config.json", "chat_template.json"):
                _check_template(path, data.get("chat_template"))
            elif path.name == "tokenizer.json":
                _check_tokenizer(path, data)
        elif path.name == "chat_template.jinja":
            with open_regular(path) as f:
                raw = f.read()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DGemmaError(f"{path}: corrupt chat template (not UTF-8: {e})") from None
            _check_template(path, text)


def _check_tokenizer(path: Path, data: dict) -> None:
    """tokenizer.json as the tokenizers library reads it (the loader's own parser, no model needed)."""
    import json

    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # the Rust parser reports every shape of corruption as one exception type
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DGemmaError(f"{path}: corrupt tokenizer ({reason})") from None


def _check_template(path: Path, template) -> None:
    """A template as transformers accepts it: a string, or a list of {"name", "template"} entries."""
    if template is None:
        return
    if isinstance(template, list):
        for entry in template:
            if not (isinstance(entry, dict) and isinstance(entry.get("template"), str)):
                raise DGemmaError(f"{path}: corrupt chat template (a list entry without a template string)")
            _check_template(path, entry["template"])
        return
    if not isinstance(template, str):
        raise DGemmaError(f"{path}: corrupt chat template (a {type(template).__name__}, not a string)")
    import jinja2

    try:
        _template_environment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise DGemmaError(f"{path}: corrupt chat template (line {e.lineno}: {e.message})") from None


def _template_environment():
    """A Jinja environment with the syntax transformers' chat templates may use: loop controls and its
    `{% generation %}...{% endgeneration %}` block."""
    import jinja2
    import jinja2.ext
    from jinja2 import nodes

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return jinja2.Environment(extensions=[Generation, jinja2.ext.loopcontrols])


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
