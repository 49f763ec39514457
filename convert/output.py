"""Producing OUT safely: checks first, everything written under a temporary name, verified, then renamed.

A finished conversion is the only thing that ever appears under OUT's name. Until then the work lives
in a hidden sibling directory (same filesystem, so the final rename is atomic) that carries a marker
file with the writer's pid; a failure or Ctrl-C removes it, and a SIGKILL leaves only that clearly
partial directory, which the next run detects as stale and clears.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.generation_config import GENERATION_CONFIG_FILE, GenerationConfig
from dgemma_mlx.jsonfile import read_json_object_or_empty
from dgemma_mlx.loading import load_model, safetensors_header
from dgemma_mlx.units import fmt_bytes

from .layout import SAFETENSORS_DTYPES
from .plan import Plan
from .source import check_side_files, read_config
from .stream import write_shards

MARKER = ".dgemma-convert-incomplete"
# Headroom on top of the exact planned bytes (filesystem blocks, metadata, the side files' slack).
DISK_MARGIN = 64 * 2**20


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    bytes_written: int
    seconds: float


def staging_path(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def check_destination(out: Path, source_dir: Path, force: bool) -> None:
    """Refuse to overwrite without --force, and never write over (or inside) the source itself."""
    out_r, src_r = out.resolve(), source_dir.resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise DGemmaError(f"{out}: the output must not be the source directory or overlap it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise DGemmaError(f"{out}: exists and is not a directory")
        if not force:
            raise DGemmaError(f"{out}: already exists (pass --force to replace it)")
        if any(out.iterdir()) and not (out / "config.json").is_file():
            # --force replaces models, never an arbitrary directory someone pointed -o at by mistake
            raise DGemmaError(
                f"{out}: exists and is not a model directory; refusing to replace it, even with --force"
            )
    if not out.parent.exists():
        raise DGemmaError(f"{out.parent}: no such directory (create it first)")


def required_bytes(plan: Plan) -> int:
    side = sum(p.stat().st_size for p in plan.source.side_files)
    return plan.output_bytes + side + DISK_MARGIN


def destination_notes(plan: Plan, output: Path, force: bool) -> list[str]:
    """What a real run would say about OUT (refusal, disk space), for `--dry-run`; writes nothing."""
    output = Path(output).expanduser()
    need = required_bytes(plan)
    notes = []
    try:
        check_destination(output, plan.source.directory, force)
    except DGemmaError as e:
        notes.append(f"Output  {e}")
    parent = output.parent if output.parent.exists() else None
    if parent is not None:
        free = shutil.disk_usage(parent).free
        verdict = "enough" if free >= need else "NOT ENOUGH"
        notes.append(f"Disk    needs {fmt_bytes(need)} at {parent}, {fmt_bytes(free)} free ({verdict})")
    return notes


def check_disk(out: Path, need: int) -> None:
    """Refuse before starting when OUT's filesystem cannot hold the result (it is written in full first)."""
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise DGemmaError(
            f"not enough free disk space at {out.parent}: conversion needs {fmt_bytes(need)}, "
            f"{fmt_bytes(free)} free"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh temporary directory next to OUT, removed on any failure (including Ctrl-C)."""
    tmp = staging_path(out)
    if tmp.exists():
        marker = tmp / MARKER
        try:
            pid = int(marker.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            raise DGemmaError(
                f"{out}: another conversion (pid {pid}) is writing it right now (if not, delete {tmp})"
            )
        shutil.rmtree(tmp)  # stale leftovers of a killed run
    tmp.mkdir()
    (tmp / MARKER).write_text(f"{os.getpid()}\n")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_metadata(plan: Plan, directory: Path) -> None:
    """config.json with the quantization block, the side files, and a generation_config.json."""
    for path in plan.source.side_files:
        shutil.copy2(path, directory / path.name)
    if not (directory / GENERATION_CONFIG_FILE).exists():
        defaults = GenerationConfig().to_dict()
        bound = defaults.pop("entropy_bound")
        defaults = {k: v for k, v in defaults.items() if v is not None}
        defaults["sampler_config"] = {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": bound}
        (directory / GENERATION_CONFIG_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    config = {
        k: v for k, v in plan.source.config.raw.items() if k not in ("quantization", "quantization_config")
    }
    # The text path only: the vision tower is not converted, and a null vision_config tells other MLX
    # runtimes (mlx-vlm) that there is none to build, rather than missing weights.
    config["vision_config"] = None
    config["dtype"] = plan.options.dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = plan.options.dtype
    if plan.quantization is not None:
        # Both names, as mlx-vlm writes them (transformers-style readers look at quantization_config).
        config["quantization"] = plan.quantization
        config["quantization_config"] = plan.quantization
    write_chat_template(directory)
    # Written last: until now the directory has no config and cannot be mistaken for a model.
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_chat_template(directory: Path) -> None:
    """`chat_template.jinja` as its own file, where mlx-vlm and recent transformers look first, when the
    template only ships inside `tokenizer_config.json`."""
    target = directory / "chat_template.jinja"
    config = directory / "tokenizer_config.json"
    if target.exists() or not config.exists():
        return
    template = read_json_object_or_empty(config).get("chat_template")
    if isinstance(template, str):
        target.write_text(template)


def verify(plan: Plan, directory: Path) -> None:
    """Reload what was written: exact sizes and headers per shard, the config, the tokenizer files and
    chat templates, then `load_model` on the result."""
    for shard in plan.shards:
        path = directory / shard.filename
        if path.stat().st_size != shard.size:
            raise DGemmaError(f"{path}: wrote {path.stat().st_size} bytes, expected {shard.size}")
        header = safetensors_header(path)
        for t in shard.tensors:
            entry = header.get(t.name)
            if (
                entry is None
                or tuple(entry["shape"]) != t.shape
                or entry["dtype"] != SAFETENSORS_DTYPES[t.dtype]
            ):
                raise DGemmaError(f"{path}: {t.name} did not round-trip (got {entry})")
    try:
        read_config(directory / "config.json")  # the config as written parses, types included
        check_side_files(directory)  # tokenizer JSON files and chat templates as written
        load_model(directory, lazy=True)  # every tensor present, right shape, quantization map applies
    except DGemmaError as e:
        raise DGemmaError(f"verification of the converted model failed: {e}") from None


def commit(tmp: Path, out: Path, force: bool) -> None:
    """Drop the marker and rename into place; with --force the old OUT is moved aside, then deleted."""
    (tmp / MARKER).unlink()
    old = None
    if out.exists() or out.is_symlink():
        if not force:  # appeared while we were converting
            raise DGemmaError(f"{out}: already exists (pass --force to replace it)")
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)  # put the previous OUT back
        raise
    if old is not None:
        if old.is_symlink() or old.is_file():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def convert_checkpoint(
    plan: Plan, out: Path, force: bool = False, advance: Callable[[int], None] = lambda n: None
) -> ConvertResult:
    """Run a plan into OUT: check, stage, stream, write metadata, verify, rename; never a partial OUT."""
    out = Path(out).expanduser()
    check_destination(out, plan.source.directory, force)
    check_disk(out, required_bytes(plan))
    started = time.perf_counter()
    with staging(out) as tmp:
        try:
            write_shards(plan, tmp, advance)
            write_metadata(plan, tmp)
            verify(plan, tmp)
            commit(tmp, out, force)
        except OSError as e:  # disk full, permissions, a source file vanishing mid-way
            where = f" ({e.filename})" if e.filename else ""
            raise DGemmaError(f"conversion failed: {e.strerror or e}{where}") from None
    return ConvertResult(out, plan.output_bytes, time.perf_counter() - started)
