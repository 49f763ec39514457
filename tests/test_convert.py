"""`dgemma convert` round trips: tiny random HF checkpoints -> MLX -> `load()` -> logits vs transformers.

Quantized outputs are checked against the reference run on their own dequantized weights (the same
recipe as the core parity tests, docs/ARCHITECTURE.md), which isolates the conversion from quantization error;
the drift that quantization itself causes is printed (top-1 agreement and KL against the unquantized
conversion), not asserted.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import typer
from hf_reference import QUANTIZABLE_TEXT, dequantized_to_hf, reference_forward, write_tiny_checkpoint
from mlx.utils import tree_flatten
from rich.console import Console
from safetensors import safe_open
from test_config import released
from test_parity import ATOL, mlx_forward
from test_quantized import dequantized_hf_weights
from typer.testing import CliRunner

from dgemma_mlx.cli.convert import convert_command
from dgemma_mlx.config import ModelConfig, estimate_weight_bytes
from dgemma_mlx.convert.layout import OutTensor, header_bytes
from dgemma_mlx.convert.plan import ConvertOptions, build_plan, recipe_sizes
from dgemma_mlx.convert.progress import byte_progress
from dgemma_mlx.convert.source import open_source
from dgemma_mlx.convert.stream import write_shards
from dgemma_mlx.loading import load, load_model
from dgemma_mlx.model import Model
from dgemma_mlx.quantization import quantize_model

# Every quantized matrix's input dim must divide by the default group size (64), experts included.
TEXT = {**QUANTIZABLE_TEXT, "moe_intermediate_size": 64}
RNG = np.random.default_rng(7)
PROMPT = RNG.integers(0, 128, (2, 7))  # longer than the sliding window (4)
CANVAS1, CANVAS2 = RNG.integers(0, 128, (2, 8)), RNG.integers(0, 128, (2, 8))
LOGITS = ("logits_first", "logits_sc", "logits_second")


# The smallest tokenizer.json the tokenizers library loads (convert checks that side files are real).
MINIMAL_TOKENIZER = (
    '{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,'
    ' "pre_tokenizer": null, "post_processor": null, "decoder": null,'
    ' "model": {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}}'
)


def write_hf_checkpoint(
    path: Path,
    dtype: str = "float32",
    max_shard_size: str | None = None,
    seed: int = 0,
    side_files: bool = False,
) -> Path:
    """A tiny random checkpoint saved by transformers (shared builder), optionally with tokenizer files."""
    write_tiny_checkpoint(path, seed=seed, dtype=dtype, max_shard_size=max_shard_size, text_overrides=TEXT)
    if side_files:  # stand-ins: only their copying is checked, they are never loaded
        (path / "tokenizer.json").write_text(MINIMAL_TOKENIZER)
        (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
        (path / "chat_template.jinja").write_text("{{ messages }}")
    return path


def cli(*args: str):
    """`dgemma convert` as the CLI will run it, on a private Typer app (cli/app.py registers the real one)."""
    app = typer.Typer()
    app.command()(convert_command)
    return CliRunner().invoke(app, list(args))


def convert(source: Path, out: Path, *flags: str) -> Path:
    result = cli(str(source), "-o", str(out), *flags)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return out


@pytest.fixture(scope="module")
def fp32_sharded(tmp_path_factory) -> Path:
    return write_hf_checkpoint(tmp_path_factory.mktemp("src") / "hf", "float32", max_shard_size="200KB")


@pytest.fixture(scope="module")
def float_reference(fp32_sharded, tmp_path_factory):
    """Logits of the unquantized float32 conversion, for the quantization drift report."""
    out = convert(fp32_sharded, tmp_path_factory.mktemp("ref") / "out", "--no-quantize", "--dtype", "float32")
    model, _ = load(out)
    return mlx_forward(model, PROMPT, CANVAS1, CANVAS2)


def drift(reference: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and mean KL(reference || quantized) over canvas positions."""
    f, q = reference.reshape(-1, reference.shape[-1]), logits.reshape(-1, logits.shape[-1])
    log_pf = f - np.logaddexp.reduce(f, axis=-1, keepdims=True)
    log_pq = q - np.logaddexp.reduce(q, axis=-1, keepdims=True)
    return float((f.argmax(-1) == q.argmax(-1)).mean()), float(
        (np.exp(log_pf) * (log_pf - log_pq)).sum(-1).mean()
    )


@pytest.mark.parametrize(
    "flags",
    [
        ("--bits", "4"),
        ("--bits", "8"),
        ("--no-quantize",),
        ("--bits", "4", "--recipe", "uniform"),
        ("--mode", "mxfp4", "--recipe", "experts-only"),
    ],
    ids=["4bit-mixed", "8bit-mixed", "float", "4bit-uniform", "mxfp4-experts-only"],
)
def test_round_trip_matches_reference_on_dequantized_weights(fp32_sharded, float_reference, tmp_path, flags):
    out = convert(fp32_sharded, tmp_path / "out", *flags, "--dtype", "float32")
    model, tokenizer = load(out)
    assert tokenizer is None  # the tiny source ships none
    ours = mlx_forward(model, PROMPT, CANVAS1, CANVAS2)

    deq_dir = dequantized_to_hf(tmp_path / "deq", dequantized_hf_weights(model), fp32_sharded)
    ref = reference_forward(deq_dir, PROMPT, CANVAS1, CANVAS2)
    for key in LOGITS:  # first canvas, self-conditioned pass (embedding as input), second canvas
        assert np.abs(ref[key] - ours[key]).max() < ATOL, key

    agree, kl = drift(float_reference["logits_sc"], ours["logits_sc"])
    print(f"\nconvert {' '.join(flags)}: top-1 agreement with float {agree:.1%}, KL(float||quant) {kl:.2e}")


def test_quantization_block_follows_the_recipe(tmp_path):
    source = write_hf_checkpoint(tmp_path / "hf", "bfloat16", side_files=True)
    out = convert(source, tmp_path / "out")  # defaults: 4-bit, mixed, bf16
    config = json.loads((out / "config.json").read_text())
    q = config["quantization"]
    assert (q["bits"], q["group_size"], q["mode"], config["dtype"]) == (4, 64, "affine", "bfloat16")
    layer = "model.decoder.layers.0"
    # The public layout (HF key tree, as mlx-vlm writes it): fused experts, entries by public module path.
    assert q[f"{layer}.experts.gate_up_proj"]["bits"] == 4 and q[f"{layer}.experts.down_proj"]["bits"] == 4
    assert not any("switch_glu" in k for k in q) and config["quantization_config"] == q
    assert q[f"{layer}.self_attn.q_proj"]["bits"] == 8
    assert q["model.decoder.embed_tokens"]["bits"] == 8
    assert q[f"{layer}.router.proj"] is False  # the router always stays in float
    weights = mx.load(str(next(out.glob("*.safetensors"))))
    assert weights[f"{layer}.router.scale"].dtype == mx.bfloat16
    assert weights["model.encoder.language_model.layers.0.layer_scalar"].dtype == mx.bfloat16
    assert not any("vision" in k or "switch_glu" in k for k in weights)
    fused = weights[f"{layer}.experts.gate_up_proj.weight"]
    assert fused.shape[1] == 2 * config["text_config"]["moe_intermediate_size"]  # gate and up rows
    assert {f"{layer}.experts.gate_up_proj.{p}" for p in ("scales", "biases")} <= weights.keys()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes()
    assert (out / "model.safetensors.index.json").exists()
    with safe_open(str(next(out.glob("*.safetensors"))), framework="numpy") as f:  # the reference reader
        assert f.metadata() == {"format": "mlx"} and len(list(f.keys())) == len(weights)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no staging directory left


def test_a_template_only_in_tokenizer_config_is_also_written_as_chat_template_jinja(tmp_path):
    source = write_hf_checkpoint(tmp_path / "hf", "bfloat16", side_files=True)
    (source / "chat_template.jinja").unlink()
    (source / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ bos_token }}"}))
    out = convert(source, tmp_path / "out", "--bits", "8")
    assert (out / "chat_template.jinja").read_text() == "{{ bos_token }}"
    assert (out / "tokenizer_config.json").read_bytes() == (source / "tokenizer_config.json").read_bytes()


@pytest.mark.parametrize(
    "dtype,shard", [("bfloat16", None), ("float16", "150KB"), ("float32", None), ("bfloat16", "150KB")]
)
def test_sources_in_each_dtype_and_layout_equal_whole_model_quantization(tmp_path, dtype, shard):
    """Streaming in slices gives bit-for-bit what quantize_model gives on the whole loaded model."""
    source = write_hf_checkpoint(tmp_path / "hf", dtype, max_shard_size=shard, seed=1)
    assert (len(list(source.glob("*.safetensors"))) > 1) == (shard is not None)
    checkpoint = open_source(source)
    # tiny slices: every tensor is read and written in several pieces, across shard boundaries
    plan = build_plan(checkpoint, ConvertOptions(chunk_bytes=2048, max_shard_bytes=100_000))
    assert len(plan.shards) > 1 and max(len(u.chunks()) for u in plan.units) > 4
    out = tmp_path / "out"
    out.mkdir()
    write_shards(plan, out)
    for f in ("config.json",):
        (out / f).write_text(json.dumps({**checkpoint.config.raw, "quantization": plan.quantization}))
    converted, _ = load_model(out)

    expected, _ = load_model(source)
    expected.set_dtype(mx.bfloat16)
    quantize_model(expected, bits=4, group_size=64, recipe="mixed")
    ours, theirs = dict(tree_flatten(converted.parameters())), dict(tree_flatten(expected.parameters()))
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert ours[k].dtype == theirs[k].dtype, k
        assert mx.array_equal(ours[k], theirs[k]).item(), k


def test_dry_run_reports_the_plan_and_writes_nothing(fp32_sharded, tmp_path):
    result = cli(str(fp32_sharded), "-o", str(tmp_path / "out"), "--dry-run")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for needle in (
        "experts",
        "attention",
        "embedding",
        "norms/scalars",
        "4-bit affine g64",
        "8-bit affine g64",
    ):
        assert needle in text
    assert "mixed" in text and "(chosen)" in text and "uniform" in text and "experts-only" in text
    assert "Memory" in text and "Disk" in text
    assert list(tmp_path.iterdir()) == []
    print("\n" + text)


def test_the_library_converts_without_the_cli(fp32_sharded, tmp_path):
    """`dgemma_mlx.convert`'s own entry points: the plan a dry run gives, then the conversion it made."""
    from dgemma_mlx.convert import convert as convert_checkpoint
    from dgemma_mlx.convert import dry_run
    from dgemma_mlx.errors import DGemmaError

    out = tmp_path / "lib"
    planned = dry_run(fp32_sharded, out, bits=8, recipe="uniform")
    assert planned.plan.options.bits == 8 and set(planned.recipe_sizes) >= {"uniform", "mixed"}
    assert not out.exists()
    seen = []

    def progress(plan):
        seen.append(plan.read_bytes)
        return contextlib.nullcontext(lambda n: None)

    result = convert_checkpoint(fp32_sharded, out, bits=8, recipe="uniform", progress=progress)
    assert result.output == out and seen == [planned.plan.read_bytes]
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8
    assert load_model(out)[0] is not None
    with pytest.raises(DGemmaError, match="--bits 7"):
        dry_run(fp32_sharded, out, bits=7)


def test_force_replaces_and_progress_is_plain_off_a_tty(fp32_sharded, tmp_path):
    out = tmp_path / "out"
    first = convert(fp32_sharded, out, "--bits", "8")
    again = cli(str(fp32_sharded), "-o", str(out))
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8  # untouched
    forced = cli(str(fp32_sharded), "-o", str(first), "--force")
    assert forced.exit_code == 0, forced.stderr
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 4
    assert "converting: 100%" in forced.stderr and "\r" not in forced.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or backup left behind


def sparse_real_checkpoint(path: Path, layers: int = 30) -> Path:
    """The released geometry in HF layout with sparse (all-zero, diskless) bf16 data: headers are real."""
    raw = released(num_hidden_layers=layers)
    params = dict(tree_flatten(Model(ModelConfig.from_dict(raw)).parameters()))  # lazy
    hf: dict[str, tuple[int, ...]] = {}
    for name, p in params.items():  # our names back to HF's (docs/ARCHITECTURE.md, "Weights")
        if name.endswith(".switch_glu.gate_proj.weight"):
            E, Ie, H = p.shape
            hf[name.replace(".switch_glu.gate_proj.weight", ".gate_up_proj")] = (E, 2 * Ie, H)
        elif name.endswith(".switch_glu.down_proj.weight"):
            hf[name.replace(".switch_glu.down_proj.weight", ".down_proj")] = tuple(p.shape)
        elif not name.endswith(".switch_glu.up_proj.weight"):
            hf[name] = tuple(p.shape)
    tensors = [OutTensor(n, mx.bfloat16, s, int(np.prod(s)) * 2) for n, s in hf.items()]
    path.mkdir()
    header = header_bytes(tensors)
    with (path / "model.safetensors").open("wb") as f:
        f.write(header)
        f.truncate(len(header) + sum(t.nbytes for t in tensors))
    (path / "config.json").write_text(json.dumps(raw))
    return path


def test_dry_run_on_the_released_geometry(tmp_path):
    """Exact plan for the 26B checkpoint: sizes match the spec's estimate, memory stays far under 8 GB."""
    source = sparse_real_checkpoint(tmp_path / "real")
    checkpoint = open_source(source)
    assert checkpoint.weight_bytes / 1e9 == pytest.approx(50.5, abs=0.1)  # 25.25B bf16 parameters
    options = ConvertOptions()
    plan = build_plan(checkpoint, options)
    text = ModelConfig.from_file(source / "config.json").text
    assert plan.output_bytes == pytest.approx(estimate_weight_bytes(text, bits=4, other_bits=8), rel=0.01)
    assert plan.memory_estimate < 1e9
    sizes = recipe_sizes(checkpoint, options)
    print("\n26B recipe sizes: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sizes.items()))
    assert sizes["uniform"] < sizes["mixed"] < sizes["experts-only"] < sizes["no-quantize"]
    assert sizes["no-quantize"] == pytest.approx(checkpoint.weight_bytes, rel=0.001)
    assert len(plan.shards) == 4 and not plan.notes()

    result = cli(str(source), "-o", str(tmp_path / "out"), "--dry-run", "--group-size", "128")
    assert result.exit_code == 0, result.stderr
    # 704-wide expert and 2112-wide dense/self-conditioning down projections do not split into 128s
    note = "note: 61 matrices (dense_mlp, experts, self_conditioning) have input size 704/2112"
    assert note in result.stdout and "they stay in bfloat16" in result.stdout
    assert not (tmp_path / "out").exists()


def test_progress_bar_on_a_terminal_and_plain_lines_elsewhere():
    tty = io.StringIO()
    with byte_progress(
        10_000_000, "converting", Console(file=tty, force_terminal=True, width=120)
    ) as advance:
        for _ in range(10):
            advance(1_000_000)
    assert "converting" in tty.getvalue() and "10.0/10.0 MB" in tty.getvalue()

    plain = io.StringIO()
    with byte_progress(10_000_000, "converting", Console(file=plain, force_terminal=False)) as advance:
        for _ in range(40):
            advance(250_000)
    lines = plain.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("converting: 100% (10.00 MB of 10.00 MB")
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()
