"""`load()`: a model directory (HF-format or MLX-converted) or hub repo -> (Model, Tokenizer).

Weights are memory-mapped by `mx.load` and only materialised once, as model parameters, so a 26B
checkpoint is never held twice. Every way a directory can be broken (missing shard, missing key,
wrong shape, truncated file) is reported as one line naming the file and the key.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten

from . import hub, memory
from .config import ModelConfig
from .errors import DGemmaError
from .jsonfile import open_regular, read_json_object
from .layout import is_ignored, public_name, to_tree
from .model import Model
from .quantization import apply_quantization_map

INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_model_path(path_or_repo: str | Path) -> Path:
    """A local directory, a name in the models folder, or a hub id from the HF cache or Hub (see hub.py)."""
    return hub.resolve_model_path(path_or_repo)


# The safetensors format's own limit on the JSON header (safetensors' MAX_HEADER_SIZE): a larger claim
# is refused before a byte of it is read.
MAX_HEADER_BYTES = 100_000_000


def safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and sanity-check a safetensors header without reading the tensor data.

    The one reader of safetensors headers (load, convert, `dgemma info`, the memory guard): anything that
    is not a regular file, a header over the format's 100 MB limit, a header that is not a JSON object
    of entries with a string dtype, a shape of non-negative integers and two ordered integer
    data_offsets, or offsets past the end of the file, is one `DGemmaError` line naming the file.
    """
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise DGemmaError(f"{path}: not a safetensors file (too short)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES:
                raise DGemmaError(
                    f"{path}: not a safetensors file (header length {header_len} exceeds the format's "
                    f"limit of {MAX_HEADER_BYTES} bytes)"
                )
            if header_len > size - 8:
                raise DGemmaError(f"{path}: not a safetensors file (header length {header_len} exceeds file)")
            header = json.loads(f.read(header_len))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DGemmaError(f"{path}: unreadable safetensors header ({_first_line(e)})") from None
    if not isinstance(header, dict):
        raise DGemmaError(f"{path}: not a safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    data_len = size - 8 - header_len
    need = 0
    for key, entry in header.items():
        problem = _entry_problem(entry)
        if problem:
            raise DGemmaError(f"{path}: not a safetensors file (tensor {key!r} {problem})")
        need = max(need, entry["data_offsets"][1])
    if need > data_len:
        raise DGemmaError(f"{path}: truncated ({data_len} data bytes, header needs {need})")
    return header


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry: Any) -> str | None:
    """What is wrong with one header entry, or None."""
    if not isinstance(entry, dict):
        return "is not an object"
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(x) for x in offsets)):
        return "has no valid data_offsets"
    if offsets[0] > offsets[1]:
        return f"has data_offsets {offsets} that end before they start"
    if not isinstance(entry.get("dtype"), str):
        return "has no string dtype"
    shape = entry.get("shape")
    if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
        return "has no valid shape (a list of non-negative integers)"
    return None


def containment_root(model_dir: Path) -> Path:
    """The folder every file of a model must resolve into: the model directory itself, or for a
    Hugging Face cache snapshot (`models--org--name/snapshots/REV`, files symlinked into
    `../../blobs/`) the repo folder `models--org--name` (see hub.py)."""
    root = Path(model_dir).resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent
    return root


def checked_model_file(model_dir: Path, name: Any, listed_in: str | None = None) -> Path:
    """`model_dir / name` for a name read from a file (or a directory listing), refused with one line
    unless it is a relative path without `..` that resolves to a regular file inside the model
    (`containment_root`): no absolute paths, no symlinks leaving it, no FIFOs or devices."""
    where = f" (listed in {listed_in})" if listed_in else ""
    if not isinstance(name, str) or not name or "\0" in name:
        raise DGemmaError(f"{model_dir}: invalid file name {name!r}{where}")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise DGemmaError(f"{model_dir}: file {name!r} is outside the model directory{where}")
    path = model_dir / rel
    try:
        mode = path.stat().st_mode
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        what = "missing shard" if listed_in else "missing file"
        raise DGemmaError(f"{path}: {what}{where}") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, permissions
        raise DGemmaError(f"{path}: cannot be read ({_first_line(e)}){where}") from None
    if not resolved.is_relative_to(containment_root(model_dir)):
        raise DGemmaError(f"{path}: points outside the model directory (to {resolved}){where}")
    if not stat.S_ISREG(mode):
        raise DGemmaError(f"{path}: not a regular file{where}")
    return path


def weight_files(model_dir: Path) -> dict[Path, list[str] | None]:
    """The shard files to read and, where an index exists, the keys each must hold.

    Every shard is checked by `checked_model_file`: names from the index (or found by the glob) never
    lead outside the model directory, nor to anything but a regular file.
    """
    index = model_dir / INDEX_FILE
    if index.exists() or index.is_symlink():
        checked_model_file(model_dir, INDEX_FILE)
        weight_map = read_json_object(index, invalid="not a valid safetensors index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise DGemmaError(f"{index}: not a valid safetensors index (no weight_map object)")
        files: dict[Path, list[str] | None] = {}
        checked: dict[str, Path] = {}
        for key, shard in weight_map.items():
            if not isinstance(shard, str):
                raise DGemmaError(
                    f"{index}: not a valid safetensors index "
                    f"(weight_map[{key!r}] is {shard!r}, not a file name)"
                )
            if shard not in checked:
                checked[shard] = checked_model_file(model_dir, shard, listed_in=INDEX_FILE)
            files.setdefault(checked[shard], []).append(key)
        return files
    found = sorted(model_dir.glob("*.safetensors"))
    if not found:
        raise DGemmaError(f"{model_dir}: no *.safetensors weights found")
    return {checked_model_file(model_dir, f.name): None for f in found}


def read_weights(model_dir: Path) -> tuple[dict[str, mx.array], dict[str, Path]]:
    """Lazily map every tensor the text model reads; remember which file each came from.

    `mx.load` only maps tensors; vision-tower tensors (and rotary tables) are dropped here, before
    anything could evaluate them, so they are never read into memory nor reported as unexpected.
    """
    weights: dict[str, mx.array] = {}
    origin: dict[str, Path] = {}
    for path, expected_keys in weight_files(model_dir).items():
        header = safetensors_header(path)
        for key in expected_keys or ():
            if key not in header:
                raise DGemmaError(f"{path}: missing tensor {key} (listed in {INDEX_FILE})")
        if all(is_ignored(key) for key in header):
            continue  # a vision-only shard is not even opened by MLX
        try:
            loaded = mx.load(str(path))
        except Exception as e:
            raise DGemmaError(f"{path}: cannot be read ({e})") from None
        for key, value in loaded.items():
            if not is_ignored(key):
                weights[key] = value
                origin[key] = path
        del loaded
    return weights, origin


def _tree_weights(model_dir: Path) -> tuple[dict[str, mx.array], Callable[[str], str], dict[str, str]]:
    """The checkpoint under this tree's names, a namer "file: checkpoint key" for errors, and the
    checkpoint key of each tree tensor. The raw mapping is dropped here, so a fused tensor is only
    referenced through its halves and is never held twice."""
    raw, origin = read_weights(model_dir)
    try:
        weights, source = to_tree(raw)
    except DGemmaError as e:
        key = str(e).split(" ", 1)[0]
        raise DGemmaError(f"{origin.get(key, model_dir)}: {e}") from None

    def name(tree_key: str) -> str:
        key = source.get(tree_key, public_name(tree_key))
        return f"{origin.get(key, model_dir)}: {key}"

    return weights, name, source


def _check_shapes(weights: dict[str, mx.array], expected: dict[str, mx.array], name, source) -> None:
    """Every tensor known and shaped as the model expects; a split fused tensor is reported whole."""
    for key, value in weights.items():
        if key not in expected:
            raise DGemmaError(f"{name(key)}: unexpected tensor")
        want = tuple(expected[key].shape)
        if tuple(value.shape) != want:
            got = tuple(value.shape)
            if "gate_up_proj" in source.get(key, ""):  # the halves of a fused tensor
                got = (*got[:-2], 2 * got[-2], got[-1])
                want = (*want[:-2], 2 * want[-2], want[-1])
            raise DGemmaError(f"{name(key)} has shape {got}, model expects {want}")


def load_model(
    path_or_repo: str | Path, dtype: str | mx.Dtype | None = None, lazy: bool = False
) -> tuple[Model, Path]:
    """Build the model from a directory's config and weights; returns it with the resolved directory.

    Quantized modules are built exactly as the files are quantized (`apply_quantization_map`), so
    weights are loaded as stored: never re-quantized, never copied.
    """
    model_dir = resolve_model_path(path_or_repo)
    config = ModelConfig.from_file(model_dir / "config.json")
    weights, name, source = _tree_weights(model_dir)
    model = Model(config)
    block = config.quantization or config.raw.get("quantization_config")
    apply_quantization_map(model, block, weights, name)
    quantized = any(k.endswith(".scales") for k in weights)
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise DGemmaError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    target = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if target is None and not quantized and mx.default_device() == mx.cpu:
        # MLX's CPU backend gathers MoE experts in float32 only; quantized experts are fine.
        target = mx.float32

    expected = dict(tree_flatten(model.parameters()))
    _check_shapes(weights, expected, name, source)
    missing = sorted(set(expected) - set(weights))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DGemmaError(f"{model_dir}: checkpoint is missing tensor {public_name(missing[0])}{more}")

    if target is not None:
        # Quantized weights are packed integers: only floats (scales and biases included) change dtype.
        weights = {
            k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()
        }
    model.load_weights(list(weights.items()), strict=True)
    del weights
    if not lazy:
        mx.eval(model.parameters())
    model.eval()
    return model, model_dir


def load(
    path_or_repo: str | Path, dtype: str | mx.Dtype | None = None, lazy: bool = False, force: bool = False
):
    """Load a DiffusionGemma checkpoint: returns (model, tokenizer); tokenizer is None if none ships.

    Refuses (one line) a model the machine cannot hold before reading its weights, unless `force`.
    """
    from .tokenizer import has_tokenizer, load_tokenizer

    model_dir = resolve_model_path(path_or_repo)
    memory.check_fits(model_dir, force=force)
    model, model_dir = load_model(model_dir, dtype=dtype, lazy=lazy)
    tokenizer = load_tokenizer(model_dir) if has_tokenizer(model_dir) else None
    model.model_dir = model_dir
    return model, tokenizer
