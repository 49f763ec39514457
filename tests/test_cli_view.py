"""The live denoising view: states and colours, any terminal width, wide and hostile token pieces,
throttled redraws, and plain output without escape codes."""

import io
import re
import time

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from dgemma_mlx.cli import style as S
from dgemma_mlx.cli import view as V
from dgemma_mlx.events import CanvasEvent, GenerationStats, PassEvent

SGR = re.compile(r"\x1b\[[0-9;]*m")
L = 8


class FakeTokenizer:
    """Pieces chosen to hurt: CJK and emoji (two cells), an escape sequence, newlines, long runs."""

    PIECES = ["hello", " 世界", "👩\u200d🔬", "\x1b[31mred", "a\nb", "\t", " " * 40, "<turn|>"]
    pad_token_id = 0
    eos_token_ids = {1}

    def token_strings(self, ids):
        return [self.PIECES[i % len(self.PIECES)] for i in ids]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.token_strings(ids))


def pass_event(pass_index=3, canvas_index=0, seed=0):
    rng = np.random.default_rng(seed)
    return PassEvent(
        canvas_index=canvas_index,
        step=48 - pass_index,
        pass_index=pass_index,
        max_steps=48,
        temperature=0.7,
        draft=np.arange(L)[None] + 2,
        canvas=np.arange(L)[None],
        accepted=np.array([[True, True, False, False, True, False, True, False]]),
        changed=np.array([[True, False, True, False, False, True, False, False]]),
        entropy=rng.random((1, L), dtype=np.float32),
        confidence=rng.random((1, L), dtype=np.float32),
        done=np.zeros(1, dtype=bool),
        finished=np.zeros(1, dtype=bool),
        elapsed=0.5,
    )


def terminal(width, height=24):
    buffer = io.StringIO()
    return Console(
        file=buffer, width=width, height=height, force_terminal=True, color_system="truecolor"
    ), buffer


def test_states_and_confidence_pick_the_style():
    assert S.position_state(True, True) == S.position_state(True, False) == S.ACCEPTED
    assert S.position_state(False, True) == S.NOISE
    assert S.position_state(False, False) == S.STABLE
    assert S.position_style(True, False, 0.99) == "bold green"
    assert S.position_style(False, True, 0.5) == "yellow"
    assert S.position_style(False, False, 0.1) == "dim cyan"


def test_pieces_are_made_safe_to_draw():
    assert V.printable("a\x1b[31mb\rc") == "a·[31mb·c"  # no raw escape or carriage return
    assert V.printable("x\ny\tz") == "x↵y→z"
    assert V.printable("x\ny", keep_newlines=True) == "x\ny"
    assert V.printable("👩\u200d🔬") == "👩\u200d🔬"
    assert cell_len(V.crop_cells("世界世界世界", 7)) <= 7 and V.crop_cells("世界世界世界", 7).endswith("…")
    assert V.crop_cells("short", 16) == "short"


@pytest.mark.parametrize("width", [1, 7, 20, 41, 80, 200])
def test_frame_fits_any_width_with_wide_characters(width):
    console, buffer = terminal(width, height=12)
    live = V.LiveView(console, FakeTokenizer())
    live.handle(CanvasEvent(0, np.array([[2, 3, 4, 5, 6, 7, 8, 9] * 4]), 5, np.zeros(1, bool), 0.3))
    console.print(live.frame(pass_event(canvas_index=1)))
    out = SGR.sub("", buffer.getvalue())
    assert "\x1b" not in out  # the hostile piece's escape never reaches the terminal raw
    lines = out.split("\n")[:-1]
    assert all(cell_len(line) <= width for line in lines), lines
    if width >= 20:
        assert len(lines) <= 12  # committed text is cropped to what fits above the canvas
        assert "canvas 2" in out and "pass 3/48" in out and "accepted 4/8" in out and "世界" in out


def test_canvas_colours_follow_the_pass():
    console, _ = terminal(80)
    live = V.LiveView(console, FakeTokenizer())
    canvas = live.canvas(pass_event())
    styles = [str(span.style) for span in canvas.spans]
    ev = pass_event()
    expected = [
        S.position_style(bool(a), bool(c), float(p))
        for a, c, p in zip(ev.accepted[0], ev.changed[0], ev.confidence[0], strict=True)
    ]
    assert styles == expected


def test_word_level_pieces_get_spaces_and_sentencepiece_pieces_do_not():
    class Words(FakeTokenizer):
        def token_strings(self, ids):
            return [f"w{i}" for i in ids]

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(self.token_strings(ids))

    words = V.Pieces(Words())
    assert words.separator is None  # probed on first use
    assert words([5, 6]) == ["w5", "w6"] and words.separator == " "
    spm = V.Pieces(FakeTokenizer())
    spm([5, 6])
    assert spm.separator == ""


def test_redraws_are_throttled():
    console, _ = terminal(80)
    live = V.LiveView(console, FakeTokenizer())
    start = time.perf_counter()
    with live:
        for i in range(3000):
            live.handle(pass_event(pass_index=i % 48 + 1))
    elapsed = time.perf_counter() - start
    assert live.draws >= 1
    assert live.draws <= elapsed / V.MIN_INTERVAL + 2
    # the adaptive interval keeps drawing near its budget even when events arrive back to back
    assert live.interval >= V.MIN_INTERVAL


def test_plain_view_and_auto_choice_never_emit_escapes():
    buffer = io.StringIO()
    console = Console(file=buffer, width=80)  # not a terminal
    view = V.make_view("auto", console, FakeTokenizer())
    assert isinstance(view, V.PlainView)
    with view:
        view.handle(pass_event())
        view.handle(CanvasEvent(0, np.zeros((1, L), int), 7, np.zeros(1, bool), 0.25))
    stats = GenerationStats(12, [30], [40], 4, [0.75], 0.01, 1.5, 0.25)
    V.print_stats(console, stats)
    out = buffer.getvalue()
    assert "\x1b" not in out
    assert "canvas 1: 7 passes, 0.25 s" in out
    line = out.splitlines()[-1]  # one line, not wrapped at 80 columns
    assert "prompt 12 tokens" in line and "4 canvases, 40 passes, 0.75 tokens/forward" in line
    assert "peak memory 0.25 GB" in line
    assert isinstance(V.make_view("auto", terminal(80)[0], None), V.LiveView)
    assert isinstance(V.make_view("none", console, None), V.NoView)
