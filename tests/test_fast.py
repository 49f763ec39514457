"""The opt-in fast-decoding knobs (dgemma_mlx/fast.py) and presets (fast_presets.py): each does what its
help says, every knob off is the reference sampler token for token, and the presets reach every door
(library, generate, chat, batch, the server's request bodies). Tiny random models only."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from tiny_models import tiny_model
from typer.testing import CliRunner

from dgemma_mlx import PassEvent, generate, load, stream_generate
from dgemma_mlx.cli.app import app
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.fast import self_conditioning
from dgemma_mlx.fast_presets import FAST_FIELDS, PRESETS, expand
from dgemma_mlx.generation_config import GenerationConfig, parse_overrides
from dgemma_mlx.sampler import accept_by_entropy
from dgemma_mlx.server.protocol import ApiError, Limits, parse_chat

PRESET = next(iter(PRESETS))  # a shipped preset
KNOB, VALUE = next(iter(PRESETS[PRESET].items()))  # one of its knobs, and that knob set otherwise
OTHER = {"max_passes": 3, "accept_confidence": 0.5, "commit_confidence": 0.5}.get(KNOB, 2)
BASE = {"max_new_tokens": 16, "max_denoising_steps": 12, "eos_token_id": [1], "pad_token_id": 0}
PROMPT = [5, 6, 7]


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=64)


def passes(model, seed=3, **knobs):
    events = list(stream_generate(model, None, PROMPT, seed=seed, **BASE, **knobs))
    return [e for e in events if isinstance(e, PassEvent)], events[-1].result


# -- validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, value",
    [
        ("max_passes", 0),
        ("accept_confidence", 0.0),
        ("accept_confidence", 1.5),
        ("commit_confidence", float("nan")),
        ("commit_stability", 0),
        ("self_conditioning_top_k", 0),
        ("self_conditioning_top_k", True),
    ],
)
def test_bad_knob_values_are_one_line_errors(name, value):
    with pytest.raises(DGemmaError, match=f"{name} must be"):
        GenerationConfig().replace(**{name: value})


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-passes", "0"], "max_passes must be an integer >= 1"),
        (["--accept-confidence", "2"], "accept_confidence must be a number in (0, 1]"),
        (["--fast", "ludicrous"], "unknown fast preset 'ludicrous'"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "chat", "batch"])
def test_bad_knobs_on_the_command_line_are_one_line_before_loading(command, args, says, tmp_path):
    argv = [command, *(["-p", "hi"] if command == "generate" else [])]
    argv += [str(tmp_path / "in.txt"), "-o", str(tmp_path / "o.jsonl")] if command == "batch" else []
    result = CliRunner().invoke(app, [*argv, "-m", str(tmp_path / "no-model"), *args])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {says}" or says in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.output and "loading" not in result.stderr


def test_presets_expand_to_every_knob_and_explicit_knobs_win():
    for name, values in PRESETS.items():
        expanded = expand({"fast": name, "max_new_tokens": 8})
        assert set(expanded) == {*FAST_FIELDS, "max_new_tokens"}
        assert all(expanded[k] == values.get(k) for k in FAST_FIELDS)
        GenerationConfig().replace(**expanded)  # every shipped preset is valid
    assert expand({"fast": "fast", "self_conditioning_top_k": 2})["self_conditioning_top_k"] == 2
    assert expand({"fast": "none"}) == dict.fromkeys(FAST_FIELDS)  # /params fast=none: all off
    assert parse_overrides(f"fast={PRESET} steps=4")["max_denoising_steps"] == 4
    with pytest.raises(DGemmaError, match="unknown fast preset"):
        parse_overrides("fast=warp")


# -- defaults and each knob ---------------------------------------------------------------------------------
def test_every_knob_off_is_the_reference_sampler(model):
    reference = generate(model, None, PROMPT, seed=3, **BASE)
    off = generate(model, None, PROMPT, seed=3, **BASE, **dict.fromkeys(FAST_FIELDS), fast=None)
    whole = generate(model, None, PROMPT, seed=3, **BASE, self_conditioning_top_k=64)  # k = V
    for other in (off, whole):
        assert np.array_equal(other.sequences, reference.sequences)
        assert other.stats.passes == reference.stats.passes


def test_the_pass_cap_caps_every_canvas(model):
    free, _ = passes(model)
    capped, result = passes(model, max_passes=2)
    assert max(e.pass_index for e in free) > 2  # the cap has something to cut
    assert max(e.pass_index for e in capped) == 2
    assert result.stats.passes[0] == 2 * result.stats.canvases
    assert capped[0].draft.tolist() == free[0].draft.tolist()  # same first pass: only the cap differs


def test_confidence_threshold_accepts_exactly_the_entropy_set_and_the_confident(model):
    threshold = 0.5
    events, _ = passes(model, accept_confidence=threshold)
    extra = 0
    for e in events:
        by_entropy = np.array(accept_by_entropy(mx.array(e.entropy), 0.1))
        confident = e.confidence >= threshold
        live = ~e.done
        assert np.array_equal(e.accepted[live], (by_entropy | confident)[live])
        only = confident & ~by_entropy & live[:, None]
        assert np.array_equal(e.canvas[only], e.draft[only])  # held with the draft token
        extra += int(only.sum())
    assert extra > 0  # the threshold accepted positions the entropy bound did not


def test_early_committed_positions_never_change_afterwards(model):
    threshold = 0.6
    events, result = passes(model, seed=5, commit_confidence=threshold)
    frozen_seen = 0
    for canvas in {e.canvas_index for e in events}:
        run = [e for e in events if e.canvas_index == canvas]
        frozen = np.zeros_like(run[0].draft, dtype=bool)
        held = run[0].draft.copy()
        for prev, cur in zip(run, run[1:], strict=False):
            assert np.array_equal(cur.draft[frozen], held[frozen])
            assert np.array_equal(cur.canvas[frozen], held[frozen])  # the next input holds it too
            newly = (cur.draft == prev.draft) & (cur.confidence >= threshold) & ~frozen
            held[newly] = cur.draft[newly]
            frozen |= newly
        frozen_seen += int(frozen.sum())
    assert frozen_seen > 0
    reference = generate(model, None, PROMPT, seed=5, **BASE)
    assert sum(result.stats.passes) < sum(reference.stats.passes)  # settled positions end canvases sooner


def test_commit_stability_waits_for_repeats(model):
    quick, _ = passes(model, seed=5, commit_confidence=0.6)
    patient, _ = passes(model, seed=5, commit_confidence=0.6, commit_stability=3)
    assert [e.draft.tolist() for e in quick] != [e.draft.tolist() for e in patient]


def test_top_k_self_conditioning_is_the_dense_mix_of_the_top_k(model):
    """The gathered mix equals the dense product with every probability outside the top k zeroed."""
    cache = model.make_cache(1)
    model.encode(mx.array([PROMPT]), cache)
    canvas = mx.array([[9, 10, 11, 12, 13, 14, 15, 16]])
    z = model.decode(canvas, cache)
    probs = mx.softmax(z, axis=-1)
    config = GenerationConfig().replace(self_conditioning_top_k=4)
    top = self_conditioning(model, config, z, probs)
    values, ids = top.values, top.ids
    assert values.shape == (1, 8, 4) and ids.shape == (1, 8, 4)
    mask = mx.zeros(probs.shape).astype(mx.bool_)
    mask = mx.put_along_axis(mask, ids, mx.array(True), axis=-1)
    sparse = model.decode(canvas, cache, self_conditioning_probs=top)
    dense_top = model.decode(canvas, cache, self_conditioning_probs=mx.where(mask, probs, 0.0))
    dense_all = model.decode(canvas, cache, self_conditioning_probs=probs)
    assert mx.allclose(sparse, dense_top, atol=1e-4).item()
    assert not mx.allclose(sparse, dense_all, atol=1e-4).item()  # k < V really drops mass


def test_a_server_batch_that_drops_a_row_keeps_the_other_rows_top_k_input(model):
    """The scheduler parks stopped rows by selecting rows of the engine state: the top-k input too."""
    from types import SimpleNamespace

    from dgemma_mlx.model import TopKProbs
    from dgemma_mlx.server.scheduler import _select_rows

    values = mx.arange(3 * 8 * 2, dtype=mx.float32).reshape(3, 8, 2)
    ids = mx.arange(3 * 8 * 2, dtype=mx.int32).reshape(3, 8, 2) + 100
    state = SimpleNamespace(self_conditioning=TopKProbs(values, ids))
    _select_rows(state, [0, 2], 3)
    kept = state.self_conditioning
    assert isinstance(kept, TopKProbs)
    assert kept.values.tolist() == values[mx.array([0, 2])].tolist()
    assert kept.ids.tolist() == ids[mx.array([0, 2])].tolist()


# -- every door -------------------------------------------------------------------------------------------
def test_the_library_takes_a_preset(model):
    for name, values in PRESETS.items():
        result = generate(model, None, PROMPT, seed=3, **BASE, fast=name)
        assert all(getattr(result.config, k) == values.get(k) for k in FAST_FIELDS)
        explicit = generate(model, None, PROMPT, seed=3, **BASE, **values)
        assert np.array_equal(result.sequences, explicit.sequences)


def test_generate_chat_and_batch_take_presets_and_knobs(model_dir, tmp_path):
    runner = CliRunner()
    m = ["-m", str(model_dir), "--seed", "1", "--max-tokens", "16", "--view", "none"]
    out = {}
    for label, extra in {"preset": ["--fast", PRESET], "knobs": ["--accept-confidence", "0.9"]}.items():
        result = runner.invoke(app, ["generate", "-p", "tell me a story", "--json", *m, *extra])
        assert result.exit_code == 0, result.output
        out[label] = json.loads(result.stdout)
    lib_model, tokenizer = load(model_dir)
    expected = generate(lib_model, tokenizer, "tell me a story", seed=1, max_new_tokens=16, fast=PRESET)
    assert out["preset"]["tokens"] == expected.new_tokens[0]

    capped = runner.invoke(app, ["chat", *m, "--max-passes", "1"], input="/params\nhello\n")
    assert capped.exit_code == 0, capped.output
    assert "max_passes = 1" in capped.stderr
    switched = runner.invoke(app, ["chat", *m], input=f"/params fast={PRESET}\n")
    assert f"{KNOB} = {VALUE}" in switched.stderr

    src = tmp_path / "in.jsonl"
    rows_in = [{"id": 1, "prompt": "hi", "fast": PRESET}, {"id": 2, "prompt": "hi"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows_in))
    argv = ["batch", str(src), "-o", str(tmp_path / "o.jsonl"), *m[:-2], "--max-passes", "1"]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == [1, 2]
    cap = {1: PRESETS[PRESET].get("max_passes") or 1, 2: 1}  # a row's preset wins over the flag
    assert all(1 <= r["passes"] <= 2 * cap[r["id"]] for r in rows)  # at most two canvases of `cap` passes


def test_server_request_bodies_take_presets_and_knobs(loaded):
    _, tokenizer = loaded
    base = GenerationConfig()
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "fast": PRESET}
    parsed = parse_chat(body, "tiny", tokenizer, base, Limits())
    assert all(getattr(parsed.config, k) == PRESETS[PRESET].get(k) for k in FAST_FIELDS)
    parsed = parse_chat({**body, KNOB: OTHER}, "tiny", tokenizer, base, Limits())
    assert getattr(parsed.config, KNOB) == OTHER  # explicit wins over the preset
    parsed = parse_chat({**body, "fast": None, "max_passes": 3}, "tiny", tokenizer, base, Limits())
    assert parsed.config.max_passes == 3 and getattr(parsed.config, KNOB) is None
    for bad, param in (({"fast": "warp"}, "fast"), ({"max_passes": 0}, "max_passes")):
        with pytest.raises(ApiError) as e:
            parse_chat({**body, **bad}, "tiny", tokenizer, base, Limits())
        assert e.value.status == 400 and e.value.param == param


def test_a_served_preset_answers_as_the_front_door(tmp_path_factory):
    """A request with `fast` in its body gets exactly what `generate(..., fast=...)` gives alone."""
    import openai
    from serve_helpers import running_server, thinking_model

    path = thinking_model(tmp_path_factory.mktemp("serve-fast"))
    model, tokenizer = load(path)
    messages = [{"role": "user", "content": "tell me a story about the sky"}]
    with running_server(path, "--served-model-name", "tiny") as live:
        client = openai.OpenAI(base_url=live.base, api_key="unused", max_retries=0, timeout=60)
        for preset in PRESETS:
            response = client.chat.completions.create(
                model="tiny", messages=messages, seed=3, max_tokens=16, extra_body={"fast": preset}
            )
            expected = generate(model, tokenizer, messages, seed=3, max_new_tokens=16, fast=preset)
            assert response.choices[0].message.content == expected.answers[0]
            assert response.usage.model_extra["dgemma"]["passes"] == expected.stats.passes[0]


def test_bench_measures_a_preset_interleaved_with_exact():
    from dgemma_mlx.bench import BenchSpec, run_bench
    from dgemma_mlx.geometry import parse_precision

    f32 = parse_precision("float32", "float32")
    knobs = tuple(PRESETS["fast"].items())
    spec = BenchSpec(geometry="tiny", precisions=(f32,), passes=2, repeats=1, fast=knobs, fast_label="fast")
    report = run_bench(spec)
    assert [row["sampler"] for row in report.rows] == ["exact", "fast"]
    assert report.setup["fast"] == {"label": "fast", **PRESETS["fast"]}
    bad = CliRunner().invoke(app, ["bench", "-g", "tiny", "--knobs", "max_tokens=3"])
    assert bad.exit_code == 1 and "--knobs takes fast-decoding knobs" in bad.stderr
