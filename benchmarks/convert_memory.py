"""Peak memory and throughput of `dgemma convert` on synthetic checkpoints with the real layer geometry.

Writes bf16 HF-layout checkpoints with the released model's shapes (hidden 2816, 128 experts of 704,
vocabulary 262144, sliding/full attention geometry) but fewer layers, converts each in a fresh
process, and prints peak RSS, bytes/s, and peak RSS over the largest single tensor. Run it with two
layer counts whose checkpoints differ ~2x in size: flat peak RSS means memory does not grow with the
model, so the 26B figure is the same number (the largest tensor, the embedding, is already full size).

    python benchmarks/convert_memory.py --layers 2 5 [--workdir /tmp/dgemma-bench] [--keep]
    python benchmarks/convert_memory.py --layers 30 --zeros   # the full 26B geometry, sparse zero data

`--zeros` writes sparse files (no data blocks), so a full-size source costs no disk; the converted
output (about 15 GB at the default recipe) is real.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dgemma_mlx.config import RELEASED_TEXT_CONFIG as REAL_TEXT

SHARD_BYTES = 4 * 10**9
GB = 1e9


def layer_types(n: int) -> list[str]:
    types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
    types[-1] = "full_attention"
    return types


def hf_tensors(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every text tensor in the HF layout, in file order."""
    t = REAL_TEXT
    H, I, Ie, E, n_h = (
        t["hidden_size"],
        t["intermediate_size"],
        t["moe_intermediate_size"],
        t["num_experts"],
        16,
    )
    out = [("model.decoder.embed_tokens.weight", (t["vocab_size"], H))]
    for i, kind in enumerate(layer_types(n_layers)):
        d, k = (t["head_dim"], t["num_key_value_heads"]) if kind == "sliding_attention" else (512, 2)
        p = f"model.decoder.layers.{i}."
        out += [
            (p + "self_attn.q_proj.weight", (n_h * d, H)),
            (p + "self_attn.k_proj.weight", (k * d, H)),
        ]
        if kind == "sliding_attention":
            out.append((p + "self_attn.v_proj.weight", (k * d, H)))
        out += [
            (p + "self_attn.o_proj.weight", (H, n_h * d)),
            (p + "self_attn.q_norm.weight", (d,)),
            (p + "self_attn.k_norm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (I, H)),
            (p + "mlp.up_proj.weight", (I, H)),
            (p + "mlp.down_proj.weight", (H, I)),
            (p + "router.proj.weight", (E, H)),
            (p + "router.scale", (H,)),
            (p + "router.per_expert_scale", (E,)),
            (p + "experts.gate_up_proj", (E, 2 * Ie, H)),
            (p + "experts.down_proj", (E, H, Ie)),
            (p + "layer_scalar", (1,)),
        ]
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "pre_feedforward_layernorm_2",
            "post_feedforward_layernorm_1",
            "post_feedforward_layernorm_2",
        ):
            out.append((p + f"{norm}.weight", (H,)))
        out.append((f"model.encoder.language_model.layers.{i}.layer_scalar", (1,)))
    s = "model.decoder.self_conditioning."
    out += [
        ("model.decoder.norm.weight", (H,)),
        (s + "pre_norm.weight", (H,)),
        (s + "gate_proj.weight", (I, H)),
        (s + "up_proj.weight", (I, H)),
        (s + "down_proj.weight", (H, I)),
    ]
    return out


def write_checkpoint(path: Path, n_layers: int, zeros: bool = False) -> int:
    """A bf16 HF-layout checkpoint, sharded at SHARD_BYTES; data is random normal (or sparse zeros)."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = hf_tensors(n_layers)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        nbytes = int(np.prod(shape)) * 2
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(32 * 2**20, dtype=np.float32) * 0.02).view(np.uint32)
    block = (block >> 16).astype(np.uint16).tobytes()  # bf16 bit patterns: 64 MB reused as data
    weight_map, total = {}, 0
    for i, group in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, begin = {"__metadata__": {"format": "pt"}}, 0
        for tname, shape in group:
            nbytes = int(np.prod(shape)) * 2
            header[tname] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [begin, begin + nbytes]}
            begin += nbytes
            weight_map[tname] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(path / name, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            if zeros:
                f.truncate(f.tell() + begin)
            else:
                left = begin
                while left:
                    n = min(left, len(block))
                    f.write(block[:n])
                    left -= n
        total += begin
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "model_type": "diffusion_gemma",
        "architectures": ["DiffusionGemmaForBlockDiffusion"],
        "canvas_length": 256,
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
        "text_config": {**REAL_TEXT, "num_hidden_layers": n_layers, "layer_types": layer_types(n_layers)},
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return total


CHILD = """
import sys, typer
from dgemma_mlx.cli.convert import convert_command
typer.run(convert_command)
"""
BASELINE = """
import resource
import dgemma_mlx.quantization  # MLX, as a conversion imports it
from dgemma_mlx.cli.convert import convert_command
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_measured(args: list[str]) -> tuple[float, int, int]:
    """Run a child; (seconds, peak RSS bytes, exit status) from wait4's rusage for that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(args)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return time.perf_counter() - start, usage.ru_maxrss * scale, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 5])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--zeros", action="store_true", help="sparse all-zero source (no disk for the source)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints and outputs")
    ap.add_argument("convert_args", nargs="*", help="extra flags for dgemma convert, after --")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="dgemma-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    scale = 1 if sys.platform == "darwin" else 1024
    base = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True, check=True)
    baseline = int(base.stdout.strip()) * scale
    print(f"baseline RSS (python + MLX + dgemma imports): {baseline / GB:.2f} GB")
    largest = REAL_TEXT["vocab_size"] * REAL_TEXT["hidden_size"] * 2  # the bf16 embedding
    rows = []
    for n in args.layers:
        src, out = work / f"hf-{n}L", work / f"mlx-{n}L"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        size = write_checkpoint(src, n, zeros=args.zeros)
        print(
            f"{n} layers: wrote {size / GB:.2f} GB source in {time.perf_counter() - t0:.0f} s; converting..."
        )
        os.sync()
        seconds, rss, code = run_measured(
            [sys.executable, "-c", CHILD, str(src), "-o", str(out), "--force", *args.convert_args]
        )
        if code != 0:
            sys.exit(f"conversion failed with exit status {code}")
        written = sum(p.stat().st_size for p in out.glob("*.safetensors"))
        rows.append((n, size, written, seconds, rss))
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)

    print()
    head = ("layers", "source", "output", "time", "rate", "peak RSS", "RSS/largest")
    print("{:>6} {:>9} {:>9} {:>7} {:>10} {:>9} {:>11}".format(*head))
    for n, size, written, seconds, rss in rows:
        print(
            f"{n:>6} {size / GB:>7.2f}GB {written / GB:>7.2f}GB {seconds:>6.0f}s "
            f"{size / seconds / 1e6:>7.0f}MB/s {rss / GB:>7.2f}GB {rss / largest:>11.2f}"
        )
    print(f"largest single tensor: embedding [262144, 2816] bf16 = {largest / GB:.2f} GB")
    if len(rows) >= 2:
        (_, s0, _, _, r0), (_, s1, _, _, r1) = rows[0], rows[-1]
        print(f"source grew {s1 / s0:.2f}x, peak RSS changed {r1 / r0:.2f}x ({(r1 - r0) / 2**20:+.0f} MB)")
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
