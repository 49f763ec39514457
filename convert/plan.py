"""What each source tensor becomes: target names, precision, exact output bytes, shards, memory.

The plan is computed from the source headers and a lazily built model tree (MLX does not allocate
a module's random init until it is evaluated, so the 26B tree costs nothing). `Model.sanitize` on lazy
placeholders says which parameter each source tensor feeds (so shapes are checked against the model),
each is written under its public name (`dgemma_mlx/layout.py`: fused experts stay fused), and precision
comes from the same recipe predicate `quantize_model` uses, so the converted directory round-trips
through `load()` by construction. Output sizes are exact: they come
from the shapes and dtypes of lazy `mx.quantize` results, never from a formula. That lets the writer
lay out every shard header before reading a byte, and lets `--dry-run` and the disk-space check be
exact as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.layout import public_module, public_name
from dgemma_mlx.model import Model
from dgemma_mlx.quant_choices import BITS, DEFAULT_RECIPE, GROUP_SIZES, MODE_FIXED, MODES, RECIPES
from dgemma_mlx.quantization import quant_params, recipe_predicate, weight_class
from dgemma_mlx.units import fmt_bytes

from .layout import OutTensor, Shard, layout_shards
from .source import SourceCheckpoint, SourceTensor

OUT_DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
DTYPE_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "f16": "float16", "fp32": "float32", "f32": "float32"}
SOURCE_MX_DTYPES = {"BF16": mx.bfloat16, "F16": mx.float16, "F32": mx.float32}
# Source bytes read and transformed at once: peak memory is the process baseline plus a small multiple
# of this, whatever the model size. Chosen with benchmarks/convert_memory.py (docs/MEASUREMENTS.md).
CHUNK_BYTES = 16 * 2**20
# Shards are never held in memory (tensors stream into place), so this only sets the file count.
MAX_SHARD_BYTES = 5 * 10**9
# The memory model behind the estimate: the process with MLX loaded, plus each slice's temporaries (the
# read buffer, the MLX copy, the expert split, quantization, the writer's bytes); docs/MEASUREMENTS.md.
BASE_PROCESS_BYTES = 280 * 2**20
MEMORY_PER_CHUNK_BYTE = 4
NORMS_AND_SCALARS = "norms/scalars"
CLASS_ORDER = (
    "experts",
    "attention",
    "dense_mlp",
    "self_conditioning",
    "embedding",
    "router",
    NORMS_AND_SCALARS,
)


@dataclass(frozen=True)
class ConvertOptions:
    """Validated conversion settings. `quantize=False` keeps every tensor in `dtype`."""

    bits: int = 4
    group_size: int = 64
    mode: str = "affine"
    dtype: str = "bfloat16"
    quantize: bool = True
    recipe: str = DEFAULT_RECIPE
    max_shard_bytes: int = MAX_SHARD_BYTES
    chunk_bytes: int = CHUNK_BYTES

    @classmethod
    def resolve(
        cls,
        bits: int | None = None,
        group_size: int | None = None,
        mode: str = "affine",
        dtype: str = "bfloat16",
        quantize: bool = True,
        recipe: str | None = None,
        **extra: Any,
    ) -> ConvertOptions:
        """Check user-facing values; mxfp4/mxfp8/nvfp4 fix bits and group size, so they refuse others."""
        if mode not in MODES:
            raise DGemmaError(f"unknown --mode {mode!r} (choose from {', '.join(MODES)})")
        dtype = DTYPE_ALIASES.get(dtype, dtype)
        if dtype not in OUT_DTYPES:
            raise DGemmaError(f"unknown --dtype {dtype!r} (choose from {', '.join(OUT_DTYPES)})")
        recipe = recipe or DEFAULT_RECIPE
        if recipe not in RECIPES:
            raise DGemmaError(f"unknown --recipe {recipe!r} (choose from {', '.join(RECIPES)})")
        if mode in MODE_FIXED:
            fixed_group, fixed_bits = MODE_FIXED[mode]
            if bits is not None and bits != fixed_bits:
                raise DGemmaError(f"--mode {mode} always uses {fixed_bits} bits (drop --bits {bits})")
            if group_size is not None and group_size != fixed_group:
                raise DGemmaError(f"--mode {mode} always uses group size {fixed_group} (drop --group-size)")
            bits, group_size = fixed_bits, fixed_group
        bits = 4 if bits is None else bits
        group_size = 64 if group_size is None else group_size
        if bits not in BITS:
            raise DGemmaError(f"unsupported --bits {bits} (choose from {', '.join(map(str, BITS))})")
        if group_size not in GROUP_SIZES and mode == "affine":
            raise DGemmaError(
                f"unsupported --group-size {group_size} (choose from {', '.join(map(str, GROUP_SIZES))})"
            )
        return cls(bits, group_size, mode, dtype, quantize, recipe, **extra)

    @property
    def out_dtype(self) -> mx.Dtype:
        return OUT_DTYPES[self.dtype]

    def describe(self) -> str:
        if not self.quantize:
            return f"unquantized, {self.dtype}"
        params = quant_params(self.bits, self.group_size, self.mode)
        main = f"{params['bits']}-bit {params['mode']} g{params['group_size']}"
        rest = {
            "uniform": f"the rest {main}",
            "mixed": "the rest 8-bit",
            "experts-only": f"the rest {self.dtype}",
        }
        return f"recipe {self.recipe}: experts {main}, {rest[self.recipe]}; norms/scalars/router {self.dtype}"


@dataclass(frozen=True)
class Target:
    """One parameter of our module tree produced from a source tensor, stored float or quantized."""

    name: str
    weight_class: str
    quant: dict[str, Any] | None
    outputs: tuple[OutTensor, ...]
    params: int

    @property
    def storage(self) -> str:
        if self.quant is None:
            return "float"
        return f"{self.quant['bits']}-bit {self.quant['mode']} g{self.quant['group_size']}"

    @property
    def nbytes(self) -> int:
        return sum(o.nbytes for o in self.outputs)


@dataclass(frozen=True)
class Unit:
    """One source tensor read in slices of `rows_per_chunk` along axis 0, and what it becomes."""

    source: SourceTensor
    targets: tuple[Target, ...]
    rows_per_chunk: int

    @property
    def rows(self) -> int:
        """Length of axis 0 (a scalar counts as one row)."""
        return self.source.shape[0] if self.source.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.source.nbytes // self.rows if self.rows else 0

    def chunks(self) -> list[tuple[int, int]]:
        return [
            (r, min(r + self.rows_per_chunk, self.rows)) for r in range(0, self.rows, self.rows_per_chunk)
        ]

    @property
    def chunk_bytes(self) -> int:
        return self.row_bytes * self.rows_per_chunk


@dataclass
class Plan:
    """Everything the writer, the verifier and `--dry-run` need, decided before any data is read."""

    source: SourceCheckpoint
    options: ConvertOptions
    model: Model = field(repr=False)
    units: list[Unit]
    shards: list[Shard]
    quantization: dict[str, Any] | None
    skipped: list[str]

    @property
    def targets(self) -> list[Target]:
        return [t for u in self.units for t in u.targets]

    @property
    def output_bytes(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def read_bytes(self) -> int:
        return sum(u.source.nbytes for u in self.units)

    @property
    def max_chunk_bytes(self) -> int:
        return max((u.chunk_bytes for u in self.units), default=0)

    @property
    def memory_estimate(self) -> int:
        return BASE_PROCESS_BYTES + MEMORY_PER_CHUNK_BYTE * self.max_chunk_bytes

    def float_fallbacks(self) -> list[Target]:
        """Matrices the recipe would quantize but whose input size the group size does not divide."""
        if not self.options.quantize:
            return []
        out = []
        for t in self.targets:
            shape = t.outputs[0].shape
            if t.quant is None and t.weight_class not in (NORMS_AND_SCALARS, "router") and len(shape) >= 2:
                if self.options.recipe != "experts-only" or t.weight_class == "experts":
                    out.append(t)
        return out

    def notes(self) -> list[str]:
        """Warnings worth a line before converting (and in `--dry-run`)."""
        fallbacks = self.float_fallbacks()
        if not fallbacks:
            return []
        classes = sorted({t.weight_class for t in fallbacks})
        dims = sorted({t.outputs[0].shape[-1] for t in fallbacks})
        return [
            f"note: {len(fallbacks)} matrices ({', '.join(classes)}) have input size "
            f"{'/'.join(map(str, dims))}, "
            f"which group size {self.options.group_size} does not divide: they stay in {self.options.dtype} "
            f"({fmt_bytes(sum(t.nbytes for t in fallbacks))}); a smaller --group-size avoids this"
        ]

    def by_class(self) -> list[tuple[str, str, int, int, int]]:
        """(class, storage, matrices, parameters, bytes) rows for reports."""
        rows: dict[tuple[str, str], list[int]] = {}
        for t in self.targets:
            row = rows.setdefault((t.weight_class, t.storage), [0, 0, 0])
            row[0] += 1
            row[1] += t.params
            row[2] += t.nbytes
        order = {c: i for i, c in enumerate(CLASS_ORDER)}
        return [
            (c, s, *v) for (c, s), v in sorted(rows.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0]))
        ]


def build_plan(source: SourceCheckpoint, options: ConvertOptions) -> Plan:
    """Map every source tensor to its outputs, check the result is exactly our module tree, lay out shards."""
    model = Model(source.config)  # lazy: nothing allocated
    expected = dict(tree_flatten(model.parameters()))
    modules = dict(tree_flatten(model.leaf_modules(), is_leaf=lambda m: isinstance(m, nn.Module)))
    quantization, decide = _quantization(model, modules, options)

    mapping, skipped = _target_names(model, source)
    units: list[Unit] = []
    produced: set[str] = set()
    for tensor in source.tensors.values():
        names = mapping.get(tensor.key)
        if names is None:
            continue
        for name, shape in names:
            if name not in expected:
                raise DGemmaError(f"{tensor.file}: unexpected tensor {tensor.key} (becomes {name})")
            want = tuple(expected[name].shape)
            if shape != want:
                raise DGemmaError(
                    f"{tensor.file}: {tensor.key} has shape {list(tensor.shape)}, model expects {list(want)}"
                )
            produced.add(name)
        # Written in the public layout: the source tensor as is, under its public name (a fused
        # gate_up_proj stays fused, and quantizing it equals quantizing its halves).
        name = public_name(names[0][0])
        target = _target(name, tuple(tensor.shape), decide(names[0][0]), options.out_dtype)
        units.append(Unit(tensor, (target,), _rows_per_chunk(tensor, [target], options.chunk_bytes)))
    missing = sorted(set(expected) - produced)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DGemmaError(f"{source.directory}: checkpoint is missing tensor(s) for {missing[0]}{more}")

    outputs = [o for u in units for t in u.targets for o in t.outputs]
    shards = layout_shards(outputs, options.max_shard_bytes)
    return Plan(source, options, model, units, shards, quantization, skipped)


def recipe_sizes(source: SourceCheckpoint, options: ConvertOptions) -> dict[str, int]:
    """Output bytes under each recipe (and unquantized) at the other settings given, for `--dry-run`."""
    sizes = {r: build_plan(source, replace(options, quantize=True, recipe=r)).output_bytes for r in RECIPES}
    sizes["no-quantize"] = build_plan(source, replace(options, quantize=False)).output_bytes
    return sizes


def _quantization(model: Model, modules: dict[str, nn.Module], options: ConvertOptions):
    """The `quantization` config block and a tree name -> params lookup.

    The block is what `quantize_model` would record (top-level defaults, an entry per quantizable
    module, `False` for those left in float), keyed by public module path (`layout.public_module`), so
    mlx-vlm, mlx-lm and `apply_quantization_map` all rebuild the module tree from it.
    """
    if not options.quantize:
        return None, lambda name: None
    predicate = recipe_predicate(options.recipe, options.bits, options.group_size, options.mode)
    decisions = {path: predicate(path, m) for path, m in modules.items() if hasattr(m, "to_quantized")}
    block: dict[str, Any] = dict(quant_params(options.bits, options.group_size, options.mode))
    for path, params in decisions.items():
        block[public_module(path)] = params

    def decide(name: str) -> dict[str, Any] | None:
        path, _, leaf = name.rpartition(".")
        params = decisions.get(path) if leaf == "weight" else None
        return params or None

    return block, decide


def _target_names(model: Model, source: SourceCheckpoint) -> tuple[dict[str, list], list[str]]:
    """Source key -> [(target name, shape)] via `Model.sanitize` on lazy placeholders.

    sanitize drops vision/rotary/lm_head keys and encoder copies of tied weights; running it on the
    whole placeholder dict gives the authoritative target set, and per key gives which source feeds
    which target. Where two sources would feed one target (an encoder copy of a decoder weight) the
    decoder's wins, as in sanitize; the union must equal the whole-dict result.
    """
    placeholders = {k: mx.zeros(t.shape, SOURCE_MX_DTYPES[t.dtype]) for k, t in source.tensors.items()}
    whole = {k: tuple(v.shape) for k, v in model.sanitize(placeholders).items()}
    owner: dict[str, str] = {}
    per_key: dict[str, list] = {}
    for key, value in placeholders.items():
        names = [(n, tuple(v.shape)) for n, v in model.sanitize({key: value}).items()]
        per_key[key] = names
        for name, _ in names:
            if name in owner and not key.startswith("model.decoder."):
                continue
            owner[name] = key
    mapping: dict[str, list] = {}
    for key, names in per_key.items():
        kept = [(n, s) for n, s in names if owner.get(n) == key and n in whole]
        if kept:
            mapping[key] = kept
    if {n for names in mapping.values() for n, _ in names} != set(whole):
        raise DGemmaError("internal error: per-tensor renaming disagrees with Model.sanitize")
    skipped = sorted(set(source.tensors) - set(mapping))
    return mapping, skipped


def _target(name: str, shape: tuple[int, ...], quant: dict[str, Any] | None, dtype: mx.Dtype) -> Target:
    params = math.prod(shape)
    cls = _report_class(name, shape)
    if quant is None:
        out = OutTensor(name, dtype, shape, params * dtype.size)
        return Target(name, cls, None, (out,), params)
    parts = mx.quantize(mx.zeros(shape, dtype), **quant)  # lazy: only shapes and dtypes are read
    base = name.removesuffix(".weight")
    names = (name, f"{base}.scales", f"{base}.biases")
    outs = tuple(OutTensor(n, p.dtype, tuple(p.shape), p.nbytes) for n, p in zip(names, parts, strict=False))
    return Target(name, cls, dict(quant), outs, params)


def _report_class(name: str, shape: tuple[int, ...]) -> str:
    path, _, leaf = name.rpartition(".")
    if leaf != "weight" or len(shape) < 2:
        return NORMS_AND_SCALARS
    cls = weight_class(path)
    return NORMS_AND_SCALARS if cls == "other" else cls


def _rows_per_chunk(tensor: SourceTensor, targets: list[Target], chunk_bytes: int) -> int:
    """Slice along axis 0 when sanitize keeps axis 0 intact for every target (plain copies, expert splits)."""
    rows = tensor.shape[0] if tensor.shape else 1
    chunkable = len(tensor.shape) >= 2 and all(o.shape[0] == rows for t in targets for o in t.outputs)
    if not chunkable or rows == 0:
        return max(rows, 1)
    row_bytes = tensor.nbytes // rows
    return max(1, min(rows, chunk_bytes // max(row_bytes, 1)))
