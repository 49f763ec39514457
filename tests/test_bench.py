"""`dgemma bench` on tiny geometries: the figures are there, positive and consistent with each other, the
geometry and precision options build what they say, and bad options are one line. No timing is asserted
(speed lives in the benchmark itself, never in a test)."""

import json

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten
from typer.testing import CliRunner

import dgemma_mlx.bench_models as bench_models
from dgemma_mlx.bench import (
    ROW_KEYS,
    BenchSpec,
    diffusion_run,
    forward_times,
    generation_config,
    prompt_ids,
    run_bench,
)
from dgemma_mlx.bench_models import autoregressive_twin, random_model, weight_bytes
from dgemma_mlx.cli.app import app
from dgemma_mlx.config import ModelConfig, estimate_weight_bytes, parameter_counts
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.geometry import GEOMETRIES, geometry_config, parse_precision
from dgemma_mlx.model import Model
from dgemma_mlx.sudoku import ASSETS

F32 = parse_precision("float32", "float32")
Q4 = parse_precision("4bit", "float32")  # float32 activations: MLX's CPU kernels are float32-only or slow
SETUP_KEYS = {
    "geometry", "weights", "layers", "hidden_size", "vocab_size", "experts", "canvas_length",
    "parameters_total", "parameters_active", "device", "mlx_version", "max_denoising_steps", "repeats",
    "statistic", "ar_tokens", "seed", "fast",
}  # fmt: skip


def bench(*args: str):
    return CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "250"})


def check_row(row: dict, ar: bool) -> None:
    """Every figure present and positive; the derived ones exactly what they are said to be."""
    assert list(row) == list(ROW_KEYS)
    for key in ("prefill_tok_s", "pass_ms", "forward_ms", "ttfc_ms", "tok_s", "peak_memory_gb", "weights_gb"):
        assert row[key] > 0, key
    assert row["outside_ms"] == pytest.approx(row["pass_ms"] - row["forward_ms"], abs=2e-3)
    # forward <= pass holds on a quiet machine but is a timing, so it is not asserted; that the forward
    # is timed on the passes' own shapes is (test_the_forward_is_timed_on_the_shapes_the_passes_saw).
    if ar:
        assert row["ar_ms_per_token"] > 0 and row["ar_prefill_tok_s"] > 0 and row["ar_peak_memory_gb"] > 0
        expected = row["pass_ms"] / row["ar_ms_per_token"]
        assert row["break_even_tokens_per_pass"] == pytest.approx(expected, abs=0.01)
    else:
        assert row["ar_ms_per_token"] is None and row["break_even_tokens_per_pass"] is None


def test_the_library_measures_every_grid_point():
    spec = BenchSpec(
        geometry="tiny", precisions=(F32, Q4), prompt_lengths=(8, 24), canvases=(1, 2), passes=3,
        repeats=1, ar=True, ar_tokens=4,
    )  # fmt: skip
    steps: list[str] = []
    report = run_bench(spec, steps.append)
    assert len(steps) == spec.steps()
    assert set(report.setup) == SETUP_KEYS and report.setup["max_denoising_steps"] == 3
    grid = [(r["precision"], r["prompt_tokens"], r["canvases"]) for r in report.rows]
    labels = ("float32", "4bit mixed (float32)")
    assert grid == [(p, n, c) for p in labels for n in (8, 24) for c in (1, 2)]
    for row in report.rows:
        check_row(row, ar=True)
        # Random weights never stop early and EOS is off: every canvas runs all its passes.
        assert row["passes_per_canvas"] == 3
        assert row["tokens_per_forward"] == pytest.approx(32 / 3, abs=0.01)
    float_rows, quantized_rows = report.rows[:4], report.rows[4:]
    assert all(q["weights_gb"] < f["weights_gb"] for f, q in zip(float_rows, quantized_rows, strict=True))


def test_the_forward_is_timed_on_the_shapes_the_passes_saw(monkeypatch):
    """Per canvas: the same canvas length, a cache holding the prompt and every canvas committed before,
    and self-conditioning on the timed calls, as in the engine's passes after a canvas's first."""
    model = random_model(geometry_config("tiny"), F32)
    spec = BenchSpec(geometry="tiny", precisions=(F32,), passes=2)
    prompt = prompt_ids(model, 8, 0)
    engine_calls, forward_calls = [], []
    real = Model.decode

    def spy(self, canvas, cache, *args, **kwargs):  # logits positionally, or probabilities by keyword
        conditioned = any(a is not None for a in (*args, *kwargs.values()))
        calls.append((canvas.shape, cache.offset, conditioned))
        return real(self, canvas, cache, *args, **kwargs)

    monkeypatch.setattr(Model, "decode", spy)
    calls = engine_calls
    _, _, _, result = diffusion_run(model, prompt, generation_config(spec, model, 3), 0)
    calls = forward_calls
    assert len(forward_times(model, prompt, result, 0)) == 3
    assert {c for c in engine_calls if c[2]} == {c for c in forward_calls if c[2]}
    assert {offset for _, offset, _ in forward_calls} == {8, 8 + 32, 8 + 64}
    assert all(shape == (1, 32) for shape, _, _ in forward_calls)


def test_json_is_one_object_with_the_documented_keys():
    result = bench("-g", "tiny", "-p", "8", "--precision", "float32,4bit", "--dtype", "float32",
                   "--passes", "2", "-r", "1", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"setup", "rows"} and set(report["setup"]) == SETUP_KEYS
    assert [r["precision"] for r in report["rows"]] == ["float32", "4bit mixed (float32)"]
    for row in report["rows"]:
        check_row(row, ar=False)
    help_text = bench("--help").stdout
    for key in [*SETUP_KEYS, *ROW_KEYS]:
        assert key in help_text, f"--help does not document {key}"


def test_the_table_has_the_ar_columns_with_ar():
    result = bench("-g", "tiny", "-p", "8", "--bits", "4", "--dtype", "float32", "--passes", "2", "-r", "1",
                   "--ar", "--ar-tokens", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("tiny (random weights): 2 layers")
    for header in ("prefill tok/s", "pass ms", "forward ms", "outside ms", "passes/canvas", "tok/forward",
                   "first canvas ms", "tok/s", "peak GB", "AR ms/tok", "break-even tok/pass"):  # fmt: skip
        assert header in out, header
    assert "4bit mixed (float32)" in out
    assert "AR ms/tok" not in bench("-g", "tiny", "-p", "8", "--precision", "float32", "--passes", "2",
                                    "-r", "1").stdout  # fmt: skip


def test_layers_cut_the_geometry():
    full, cut = geometry_config("26b-a4b"), geometry_config("26b-a4b", layers=2)
    assert full.text.num_hidden_layers == 30 and cut.text.num_hidden_layers == 2
    assert cut.text.layer_types == ("sliding_attention", "full_attention")
    assert cut.text.head_dims == (256, 512) and cut.text.kv_heads == (8, 2)  # the released per-layer dims
    counts = parameter_counts(cut.text)
    assert counts["total"] < parameter_counts(full.text)["total"]
    assert counts["embedding"] == 262144 * 2816
    result = bench("-g", "tiny", "--layers", "1", "-p", "4", "--precision", "float32", "--passes", "2",
                   "-r", "1", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    setup = json.loads(result.stdout)["setup"]
    assert setup["layers"] == 1
    assert setup["parameters_total"] == parameter_counts(geometry_config("tiny", 1).text)["total"]
    assert setup["parameters_total"] < parameter_counts(geometry_config("tiny").text)["total"]


@pytest.mark.parametrize("name", [n for n, g in GEOMETRIES.items() if g.text is not None])
def test_each_random_geometry_builds_its_parameter_count(name):
    config = geometry_config(name, 1 if name == "26b-a4b" else None)
    # The released shapes lazily (nothing materialised); the others built with their random weights.
    model = Model(config) if name == "26b-a4b" else random_model(config, F32)
    built = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert built == parameter_counts(config.text)["total"]


def test_a_quantized_random_model_never_holds_the_float32_model(monkeypatch):
    """Built chunk by chunk straight into the quantized modules: the peak stays well under the float32
    size (what building float32 and then quantizing would need), and the recipe is the one asked for."""
    monkeypatch.setattr(bench_models, "CHUNK_VALUES", 1 << 20)
    config = geometry_config("mid")
    mx.clear_cache()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    model = random_model(config, parse_precision("4bit", "bfloat16"))  # bf16 scales, as estimated
    assert mx.get_peak_memory() - base < 0.5 * 4 * parameter_counts(config.text)["total"]
    layer = model.layers[0]
    assert layer.experts.switch_glu.gate_proj.bits == 4
    assert layer.self_attn.q_proj.bits == 8 and model.model.decoder.embed_tokens.bits == 8  # mixed
    assert isinstance(layer.router.proj, nn.Linear) and not hasattr(layer.router.proj, "scales")
    assert weight_bytes(model) == pytest.approx(estimate_weight_bytes(config.text, 4, 8), rel=0.02)


def test_the_autoregressive_twin_shares_the_weights():
    model = random_model(geometry_config("tiny"), Q4)
    twin = autoregressive_twin(model)
    ours = dict(tree_flatten(model.parameters()))
    theirs = dict(tree_flatten(twin.parameters()))
    for path, value in theirs.items():
        assert ours["model.decoder." + path.removeprefix("model.")] is value, path
    shared = {p for p in ours if p.startswith("model.decoder.") and ".self_conditioning." not in p}
    assert len(theirs) == len(shared)


def test_the_bundled_sudoku_model_and_a_checkpoint_path():
    sudoku_config = ModelConfig.from_file(ASSETS / "config.json")
    result = bench("-g", "sudoku", "-p", "84", "--passes", "3", "-r", "1", "--ar", "--ar-tokens", "3",
                   "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["setup"]["weights"] == "checkpoint" and report["setup"]["canvas_length"] == 81
    assert report["setup"]["parameters_total"] == parameter_counts(sudoku_config.text)["total"]
    (row,) = report["rows"]
    assert row["precision"] == "stored" and row["dtype"] == "float32"
    check_row(row, ar=True)
    result = bench("-m", str(ASSETS), "--precision", "stored,4bit", "--dtype", "float32", "-p", "84",
                   "--passes", "2", "-r", "1", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["precision"] for r in rows] == ["stored", "4bit mixed (float32)"]
    assert rows[1]["weights_gb"] < rows[0]["weights_gb"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["-g", "nope"], "unknown geometry"),
        (["--layers", "0"], "--layers"),
        (["-g", "26b-a4b", "--layers", "31"], "between 1 and 30"),
        (["-g", "sudoku", "--layers", "2"], "runs whole"),
        (["-m", str(ASSETS), "-g", "mid"], "drop --geometry"),
        (["-m", "/nonexistent/model"], "no such model"),
        (["--precision", "3.5bit"], "unknown precision"),
        (["--precision", "stored"], "is for a checkpoint"),
        (["--bits", "7"], "--bits"),
        (["--bits", "4", "--precision", "float32"], "give one of them"),
        (["--group-size", "48"], "--group-size"),
        (["--dtype", "int8"], "unknown dtype"),
        (["--recipe", "half"], "unknown precision recipe"),
        (["-p", "12,x"], "--prompt"),
        (["-c", "0"], "--canvases"),
        (["--passes", "1"], "--passes"),
        (["-r", "0"], "--repeats"),
        (["--ar-tokens", "1"], "--ar-tokens"),
    ],
)
def test_bad_options_are_one_line_before_anything_is_built(args, says):
    result = bench(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith("error:") and says in lines[0]
    assert result.stdout == ""


def test_an_op_mlx_cannot_run_here_is_one_line(monkeypatch):
    def refuse(*_, **__):
        raise RuntimeError("[GatherMM::eval] Currently only supports float32.")

    monkeypatch.setattr("dgemma_mlx.bench.measure", refuse)
    with pytest.raises(DGemmaError, match="float32 does not run on .*GatherMM"):
        run_bench(BenchSpec(geometry="tiny", precisions=(F32,), repeats=1))
