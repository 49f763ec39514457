"""`dgemma infill` and `dgemma_mlx.infill` on the tiny word-level model (canvas of 8 positions).

What must hold whatever the model writes: the template's fixed text is pinned, so it never changes on
any pass and comes back byte for byte; only hole positions are sampled; malformed templates are one
line before any model loads.
"""

import io
import json
import re

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from dgemma_mlx.cli.app import app
from dgemma_mlx.errors import DGemmaError
from dgemma_mlx.events import CanvasEvent, FinishEvent, PassEvent
from dgemma_mlx.infill import Hole, InfillPlan, InfillResult, infill, infill_stream, parse_template

# Several holes, one across the boundary of canvases 1 and 2, fixed text after it on later canvases,
# and characters the word-level vocabulary does not know (they tokenize to <unk> but are copied back).
TEMPLATE = (
    "hello there , tell me a story\n[[fill:3]] about the sky . [[fill:5]] blue ?\n"
    "the moon and the sun ... ☾ [[fill:2]] good night\t ✓ the end\n"
)
FAST = {"max_denoising_steps": 5}


def fixed_pattern(template):
    """A regex that matches the template with any text in each hole, fixed text literal."""
    parts = [re.escape(p) if isinstance(p, str) else "(.*?)" for p in template.pieces]
    return re.compile("".join(parts), re.DOTALL)


# -- parsing ---------------------------------------------------------------------------------------


def test_holes_are_found_with_their_sizes_and_the_text_between_is_kept():
    t = parse_template("a [[fill]] b [[fill:7]]c", default_tokens=4)
    assert t.pieces == ("a ", Hole(0, 2, 10, 4), " b ", Hole(1, 13, 23, 7), "c")
    assert t.fill(["X", "Y"]) == "a X b Yc"
    custom = parse_template("x [[fill]] <<hole:2>>", open_marker="<<hole", close_marker=">>")
    assert [h.tokens for h in custom.holes] == [2] and custom.pieces[0] == "x [[fill]] "


@pytest.mark.parametrize(
    "text, message",
    [
        ("no hole here", "the template has no hole: mark one with [[fill]]"),
        ("one\ntwo [[fill:3 and more", "line 2, column 5: [[fill is not closed by ]]"),
        ("a [[fill:0]] b", "line 1, column 3: a hole needs at least 1 token (got 0)"),
        ("a [[fill:-2]] b", "a hole needs at least 1 token (got -2)"),
        ("a [[fill:x]] b", "'[[fill:x]]' is not a hole"),
        ("a [[fillet]] b", "'[[fillet]]' is not a hole"),
        ("a [[fill: 3]] b", "'[[fill: 3]]' is not a hole"),
    ],
)
def test_malformed_templates_are_one_line_errors(text, message):
    with pytest.raises(DGemmaError) as caught:
        parse_template(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# -- generation ------------------------------------------------------------------------------------


def run(loaded, template, **kwargs):
    model, tokenizer = loaded
    return list(infill_stream(model, tokenizer, parse_template(template), **{**FAST, **kwargs}))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pinned_tokens_never_change_and_the_text_outside_the_holes_is_kept(loaded, seed):
    events = run(loaded, TEMPLATE, seed=seed)
    plan = events[0]
    assert isinstance(plan, InfillPlan)
    L = plan.canvas_length
    # the last hole ends on canvas 3, which "good" closes; "night ... the end" is copied, not generated
    assert plan.canvases == 3 and plan.fixed[23] == loaded[1].encode("good", add_special_tokens=False)[0]
    passes = [e for e in events if isinstance(e, PassEvent)]
    assert {e.canvas_index for e in passes} == {0, 1, 2}
    for e in passes:
        base = e.canvas_index * L
        for i in range(L):
            if base + i in plan.fixed:
                expected = plan.fixed[base + i]
                assert e.draft[0, i] == expected and e.canvas[0, i] == expected, (
                    e.canvas_index,
                    e.pass_index,
                    i,
                )
    holes = {start + k for start, size in plan.holes for k in range(size)}
    assert holes.isdisjoint(plan.fixed) and len(holes) + len(plan.fixed) == plan.canvases * L
    result = events[-1]
    assert isinstance(result, InfillResult)
    match = fixed_pattern(parse_template(TEMPLATE)).fullmatch(result.text)
    assert match is not None, result.text
    assert list(match.groups()) == [h.text for h in result.holes]
    # the committed ids are the pins where pinned, and each hole's ids are what it reports
    generated = result.generation.sequences[0, -plan.canvases * L :]
    assert all(generated[p] == t for p, t in plan.fixed.items())
    for (start, size), hole in zip(plan.holes, result.holes, strict=True):
        assert hole.tokens == generated[start : start + size].tolist()


def test_holes_are_sampled_and_filled_from_their_own_positions(loaded):
    model, tokenizer = loaded
    result = infill(model, tokenizer, "the sky is [[fill:4]] and the sun is [[fill:4]] .", seed=3, **FAST)
    words = [h.text for h in result.holes]
    assert any(words), "the model wrote nothing into any hole"  # a random model still writes words
    for hole in result.holes:
        assert hole.text == tokenizer.decode(hole.tokens, skip_special_tokens=True)
    assert result.text == f"the sky is {words[0]} and the sun is {words[1]} ."


def test_passes_per_hole_are_its_canvases_passes_and_the_prefix_is_the_prompt(loaded):
    events = run(loaded, TEMPLATE, seed=4)
    plan, result = events[0], events[-1]
    canvas_passes = [e.passes for e in events if isinstance(e, CanvasEvent)]
    # hole 0 on canvas 1, hole 1 across canvases 1-2, hole 2 on canvas 3 (8 positions per canvas)
    assert [(s // 8, (s + n - 1) // 8) for s, n in plan.holes] == [(0, 0), (0, 1), (2, 2)]
    expected = [canvas_passes[0], canvas_passes[0] + canvas_passes[1], canvas_passes[2]]
    assert [h.passes for h in result.holes] == expected
    _, tokenizer = loaded
    prefix = "hello there , tell me a story\n"
    assert plan.prefix == prefix
    assert plan.prompt == [tokenizer.bos_token_id, *tokenizer.encode(prefix, add_special_tokens=False)]
    assert result.generation.stats.prompt_tokens == len(plan.prompt)


def test_the_prefix_can_stay_on_the_canvas_and_the_template_end_is_pinned_to_end_of_text(loaded):
    events = run(loaded, "tell me a [[fill:2]] .", seed=5, prefix_in_prompt=False)
    plan = events[0]
    assert plan.prompt == [2] and plan.prefix == ""  # <bos> only
    _, tokenizer = loaded
    words = tokenizer.encode("tell me a", add_special_tokens=False)
    assert [plan.fixed[i] for i in range(len(words))] == words
    tail = [plan.fixed[i] for i in range(len(words) + 3, 8)]  # after the hole (2) and "." (1)
    assert tail == [1, 0]  # <eos>, then <pad>
    assert isinstance(events[-1], InfillResult)


def test_the_length_and_end_of_text_are_the_templates(loaded):
    model, tokenizer = loaded
    with pytest.raises(DGemmaError, match="length comes from its template"):
        list(infill_stream(model, tokenizer, parse_template("a [[fill]]"), max_new_tokens=8))


def test_real_gemma4_vocabulary_keeps_the_text_byte_for_byte(chat_model_dir):
    from dgemma_mlx import load

    model, tokenizer = load(chat_model_dir)
    template = "def área(r):\n    return [[fill:6]]  # π r²\r\n\n[[fill:3]]\n"
    result = infill(model, tokenizer, template, seed=0, **FAST)
    assert fixed_pattern(parse_template(template)).fullmatch(result.text)
    assert (
        result.text.encode()
        == template.replace("[[fill:6]]", result.holes[0].text)
        .replace("[[fill:3]]", result.holes[1].text)
        .encode()
    )


# -- the command -----------------------------------------------------------------------------------


@pytest.fixture()
def cli(model_dir):
    runner = CliRunner()

    def invoke(*args, input=None, model=True):
        return runner.invoke(app, [*args, *(["-m", str(model_dir)] if model else [])], input=input)

    return invoke


def test_command_prints_the_filled_template_byte_for_byte(cli, tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(TEMPLATE.encode())
    out = cli("infill", "--file", str(path), "--seed", "1", "--steps", "5")
    assert out.exit_code == 0, out.output
    assert fixed_pattern(parse_template(TEMPLATE)).fullmatch(out.stdout)
    assert out.stdout.endswith("the end\n") and "canvas 3:" in out.stderr
    same = cli("infill", "--seed", "1", "--steps", "5", input=TEMPLATE)  # stdin, as piped
    assert same.exit_code == 0 and same.stdout == out.stdout


def test_command_json_has_each_holes_text_and_passes(cli):
    out = cli("infill", "the sky [[fill:2]] blue [[fill]] .", "--json", "--seed", "2", "--steps", "4")
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert set(payload) == {"text", "holes", "stats"}
    assert [set(h) for h in payload["holes"]] == [{"index", "text", "tokens", "passes"}] * 2
    assert [len(h["tokens"]) for h in payload["holes"]] == [2, 16]
    assert all(1 <= h["passes"] <= 4 * payload["stats"]["canvases"] for h in payload["holes"])
    texts = [h["text"] for h in payload["holes"]]
    assert payload["text"] == f"the sky {texts[0]} blue {texts[1]} ."


def test_custom_markers_and_default_size_from_the_command(cli):
    out = cli(
        "infill", "a [[fill]] b {{}} c", "--open", "{{", "--close", "}}", "--fill-tokens", "3", "--json"
    )
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert len(payload["holes"]) == 1 and len(payload["holes"][0]["tokens"]) == 3
    assert payload["text"].startswith("a [[fill]] b ") and payload["text"].endswith(" c")


@pytest.mark.parametrize(
    "template, message",
    [
        ("unclosed [[fill:4 here", "[[fill is not closed by ]]"),
        ("a [[fill:0]] b", "a hole needs at least 1 token"),
        ("no hole at all", "the template has no hole"),
    ],
)
def test_malformed_templates_exit_1_with_one_line_before_loading(cli, template, message):
    out = cli("infill", template)
    assert out.exit_code == 1
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr
    assert "loading" not in out.stderr and "Traceback" not in out.output and out.stdout == ""


@pytest.mark.parametrize(
    "argv, stdin",
    [
        (["infill", "a [[fill]]", "--max-tokens", "8"], None),
        (["infill", "a [[fill]]", "--file", "x.txt"], None),
        (["infill", "a [[fill]]", "--fill-tokens", "0"], None),
    ],
)
def test_usage_errors_exit_2(cli, argv, stdin):
    out = cli(*argv, input=stdin)
    assert out.exit_code == 2, out.output


def test_template_file_must_be_text(cli, tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"a [[fill]] \x00\x01")
    out = cli("infill", "--file", str(path))
    assert out.exit_code == 1 and "binary file" in out.stderr


# -- the live view ---------------------------------------------------------------------------------


def test_live_view_draws_fixed_text_plain_and_only_holes_in_colour(loaded):
    from dgemma_mlx.cli.span_view import FIXED, InfillView

    _, tokenizer = loaded
    events = run(loaded, "hello there [[fill:3]] the sky [[fill:2]] .", seed=6)
    plan = events[0]
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=30)
    view = InfillView(console, tokenizer)
    with view:
        for event in events:
            view.handle(event)
    first = next(e for e in events if isinstance(e, PassEvent))
    text = view.canvas(first)
    styles = [str(span.style) for span in text.spans]
    pinned = plan.is_fixed(0)
    assert len(styles) == len(pinned)
    assert [s == FIXED for s in styles] == pinned  # fixed positions plain, every hole position coloured
    assert view.committed_text.startswith("hello there")  # the prompt's text is shown above the canvas
    assert isinstance(events[-2], FinishEvent) and np.asarray(first.draft).shape == (1, 8)
