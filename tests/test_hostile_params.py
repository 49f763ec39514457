"""Issue #22, silent wrong results: NaN/inf, out-of-range and wrongly typed generation parameters are
refused with the allowed range on every path (library, CLI flags, /params, batch JSON,
generation_config.json), and NaN/inf weights stop at the first pass with one line."""

import json
import math

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from tiny_models import word_chat_model
from typer.testing import CliRunner

from dgemma_mlx import generate, load
from dgemma_mlx.cli.app import app
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.generation_config import GenerationConfig, check_fields, parse_overrides
from dgemma_mlx.session import ChatSession

NAN, INF = float("nan"), float("inf")
NON_FINITE = [NAN, INF, -INF]
NOT_NUMBERS = [True, False, "abc", "1", [1.0], {"x": 1}]
# Per field: values that must be refused on their own (whatever the other fields are).
BAD = {
    "max_new_tokens": [*NON_FINITE, *NOT_NUMBERS, 0, -1, 1.5, 8.0],
    "max_denoising_steps": [*NON_FINITE, *NOT_NUMBERS, 0, -3, 2.5],
    "entropy_bound": [*NON_FINITE, *NOT_NUMBERS, 0, 0.0, -0.1],
    "t_min": [*NON_FINITE, *NOT_NUMBERS, -0.1, -1],
    "t_max": [*NON_FINITE, *NOT_NUMBERS, -0.5],
    "stability_threshold": [*NON_FINITE, *NOT_NUMBERS, -1, 1.5],
    "confidence_threshold": [*NON_FINITE, *NOT_NUMBERS, 0, -0.01],
    "eos_token_id": [*NON_FINITE, True, "abc", -1, [1, True], [1, NAN], [1, -2]],
    "pad_token_id": [*NON_FINITE, *NOT_NUMBERS, -1, 1.0],
    "max_length": [*NON_FINITE, *NOT_NUMBERS, 0, -5],
}
CASES = [(name, value) for name, values in BAD.items() for value in values]


def _id(case):
    name, value = case
    return f"{name}={value!r}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_bad_value_is_refused_with_its_range(case):
    name, value = case
    with pytest.raises(DGemmaError) as caught:
        GenerationConfig().replace_explicit(**{name: value})
    message = str(caught.value)
    assert "\n" not in message and name in message and "must be" in message
    assert "got" in message  # the offending value is shown


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_the_checkpoint_file_path_refuses_them_too(case):
    name, value = case
    raw = {"sampler_config": {"entropy_bound": value}} if name == "entropy_bound" else {name: value}
    with pytest.raises(DGemmaError, match=name):
        GenerationConfig.from_dict(raw)


@pytest.mark.parametrize("name", [n for n in BAD if n != "eos_token_id"])
def test_the_message_names_the_allowed_range_and_the_value(name):
    with pytest.raises(DGemmaError) as caught:
        check_fields(**{name: NAN})
    message = str(caught.value)
    assert f"{name} must be a" in message and "(got nan)" in message
    assert any(word in message for word in (">= 0", "> 0", ">= 1"))


def test_good_values_still_pass():
    config = GenerationConfig().replace_explicit(
        max_new_tokens=1,
        max_denoising_steps=1,
        entropy_bound=1e-9,
        t_min=0,
        t_max=2,
        stability_threshold=0,
        confidence_threshold=1,
        eos_token_id=[0, 106],
        pad_token_id=0,
        max_length=1,
    )
    assert config.eos_token_id == (0, 106) and config.t_min == 0
    assert GenerationConfig().replace_explicit(t_min=None, t_max=None, stability_threshold=None).t_min is None
    with pytest.raises(DGemmaError, match="greater than t_min"):
        GenerationConfig().replace(t_min=0.5, t_max=0.5)


@pytest.mark.parametrize(
    "text",
    [
        "entropy_bound=inf",
        "entropy_bound=nan",
        "t_min=-inf",
        "steps=nan",
        "max_tokens=0",
        "confidence_threshold=-1",
        "t_max=inf",
    ],
)
def test_chat_params_refuse_them(text, loaded):
    model, tokenizer = loaded
    session = ChatSession(model, tokenizer)
    before = session.config
    with pytest.raises(DGemmaError, match="must be"):
        session.set_params(**parse_overrides(text))
    assert session.config == before


# -- through the model and the command line -------------------------------------------------------
def one_line_error(result, *needles):
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output
    # the loading notice is progress, not an error; the error itself must be one line
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("loading ")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


FLAG_CASES = [
    (flag, value)
    for flag, values in {
        "--entropy-bound": ["nan", "inf", "-inf", "0", "-1"],
        "--t-min": ["nan", "inf", "-inf", "-0.5"],
        "--t-max": ["nan", "inf", "-inf", "-2"],
    }.items()
    for value in values
]


@pytest.mark.parametrize("flag,value", FLAG_CASES)
def test_generate_flags_are_refused_in_one_line(model_dir, flag, value):
    result = CliRunner().invoke(
        app, ["generate", "-p", "hello", "-m", str(model_dir), flag, value, "--view", "plain"]
    )
    name = flag[2:].replace("-", "_")
    one_line_error(result, name)


@pytest.mark.parametrize("flag,value", FLAG_CASES)
def test_batch_flags_are_refused_before_any_file_is_touched(model_dir, tmp_path, flag, value):
    src, out = tmp_path / "in.txt", tmp_path / "out.jsonl"
    src.write_text("hello\nworld\n")
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir), flag, value])
    one_line_error(result, flag[2:].replace("-", "_"), "must be")
    assert not out.exists() and not (tmp_path / "out.errors.jsonl").exists()
    assert src.read_text() == "hello\nworld\n"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_batch_json_lines_with_bad_values_go_to_the_errors_file(case, tmp_path):
    from dgemma_mlx.batch import read_requests

    name, value = case
    src = tmp_path / "in.jsonl"
    row = json.dumps({"id": 1, "prompt": "x", name: value}) if value is not None else ""
    src.write_text(json.dumps({"id": 0, "prompt": "fine"}) + "\n" + row + "\n")
    requests, bad = read_requests(src)
    assert [r.id for r in requests] == [0]
    assert len(bad) == 1 and bad[0].line == 2 and name in bad[0].reason and "must be" in bad[0].reason


def test_batch_json_nan_literal_end_to_end(model_dir, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"id": 1, "prompt": "hi", "max_new_tokens": 8}\n{"id": 2, "prompt": "x", "t_min": NaN}\n')
    result = CliRunner().invoke(app, ["batch", str(src), "-o", str(out), "-m", str(model_dir), "--seed", "0"])
    assert result.exit_code == 1, result.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1]
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert (
        len(errors) == 1 and errors[0]["line"] == 2 and "t_min must be a finite number" in errors[0]["error"]
    )


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "true", '"0.1"', "0", "-1"])
def test_a_checkpoint_generation_config_with_bad_values_is_refused(tmp_path, value):
    model_dir = word_chat_model(tmp_path / "m")
    path = model_dir / "generation_config.json"
    raw = json.loads(path.read_text())
    raw["confidence_threshold"] = "@@"
    path.write_text(json.dumps(raw).replace('"@@"', value))
    result = CliRunner().invoke(app, ["generate", "-p", "hello", "-m", str(model_dir), "--view", "plain"])
    one_line_error(result, "confidence_threshold")


# -- NaN/inf weights --------------------------------------------------------------------------------
@pytest.mark.parametrize("poison", [NAN, INF, -INF])
def test_non_finite_weights_stop_at_the_first_pass(model_dir, poison):
    model, tokenizer = load(model_dir)
    name, weight = next((k, v) for k, v in tree_flatten(model.parameters()) if "embed" in k)
    spoiled = weight.astype(mx.float32)
    spoiled[3] = poison
    model.load_weights([(name, spoiled.astype(weight.dtype))], strict=False)
    with pytest.raises(DGemmaError, match="non-finite logits") as caught:
        generate(model, tokenizer, [list(range(1, 12))], seed=0, max_new_tokens=8)
    assert "\n" not in str(caught.value)


def test_non_finite_weights_on_disk_are_one_line_at_the_cli(tmp_path):
    model_dir = word_chat_model(tmp_path / "m")
    tensors = mx.load(str(model_dir / "model.safetensors"))
    for key, value in tensors.items():
        if value.ndim == 2:
            tensors[key] = mx.full(value.shape, math.nan, dtype=value.dtype)
    mx.save_safetensors(str(model_dir / "model.safetensors"), tensors)
    result = CliRunner().invoke(app, ["generate", "-p", "hello", "-m", str(model_dir), "--view", "plain"])
    one_line_error(result, "non-finite logits")
