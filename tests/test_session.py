"""Chat sessions on the real Gemma 4 vocabulary: each turn encodes only new tokens, with exact results."""


import mlx.core as mx
import numpy as np
import pytest
from tiny_models import GENERATION

from dgemma_mlx import CanvasEvent, DGemmaError, FinishEvent, PassEvent, generate, load, stream_generate
from dgemma_mlx.session import ChatSession


@pytest.fixture(scope="module")
def chat_model(chat_model_dir):
    return load(chat_model_dir)


def record_encodes(model, monkeypatch):
    calls: list[int] = []
    original = model.encode

    def spy(ids, cache):
        calls.append(ids.shape[1])
        return original(ids, cache)

    monkeypatch.setattr(model, "encode", spy)
    return calls


def test_second_turn_encodes_only_its_new_tokens_and_matches_full_history(chat_model, monkeypatch):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, system="Be brief.", seed=0)
    session.ask("Hello there")
    first_prompt = session.cached_tokens
    assert [m["role"] for m in session.messages] == ["user", "assistant"]

    calls = record_encodes(model, monkeypatch)
    session.ask("And what about tomorrow?")
    full_ids = session.render(session.messages[:-1])
    assert session.cached_tokens == len(full_ids) > first_prompt
    assert calls[0] == len(full_ids) - first_prompt  # the prompt encode covered only the new turn

    canvas = mx.array([[10, 20, 30, 40, 50, 60, 70, 80]])
    fresh = model.make_cache(1)
    model.encode(mx.array([full_ids]), fresh)
    incremental = np.array(model.decode(canvas, session._cache))
    whole = np.array(model.decode(canvas, fresh))
    assert np.abs(incremental - whole).max() < 1e-4


def test_interrupted_turn_leaves_history_and_cache_untouched(chat_model):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, seed=1)
    session.ask("Hi")
    messages, cached = list(session.messages), session.cached_tokens
    stream = session.stream("Tell me a long story")
    for event in stream:
        if isinstance(event, PassEvent):
            break  # the user pressed Ctrl-C mid-canvas
    stream.close()
    assert session.messages == messages and session.cached_tokens == cached


def test_system_change_reencodes_and_reset_forgets(chat_model, monkeypatch):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, seed=2)
    session.ask("Hi")
    session.set_system("You are a pirate.")
    calls = record_encodes(model, monkeypatch)
    session.ask("Hi again")
    assert calls[0] == session.cached_tokens  # prefix changed: the whole conversation was encoded
    session.reset()
    assert session.messages == [] and session.cached_tokens == 0


def test_save_and_load_round_trip(chat_model, tmp_path):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, system="S", seed=3)
    session.ask("One")
    session.save(tmp_path / "s.json")
    other = ChatSession(model, tokenizer)
    other.load(tmp_path / "s.json")
    assert other.messages == session.messages and other.system == "S"
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DGemmaError, match="not a dgemma chat session"):
        other.load(tmp_path / "bad.json")


def test_text_messages_and_ids_prompts_agree(chat_model):
    model, tokenizer = chat_model
    ids = tokenizer.render_chat([{"role": "user", "content": "Why is the sky blue?"}])
    by_text = generate(model, tokenizer, "Why is the sky blue?", seed=4)
    by_messages = generate(model, tokenizer, [{"role": "user", "content": "Why is the sky blue?"}], seed=4)
    by_ids = generate(model, tokenizer, ids, seed=4)
    assert np.array_equal(by_text.sequences, by_ids.sequences)
    assert np.array_equal(by_messages.sequences, by_ids.sequences)
    assert by_ids.sequences[0, : len(ids)].tolist() == ids
    raw = generate(model, tokenizer, "Why is the sky blue?", chat_template=False, seed=4)
    assert raw.prompt_lengths[0] < len(ids)
    assert isinstance(by_ids.text, str)


def test_generation_defaults_come_from_the_checkpoint(chat_model):
    model, tokenizer = chat_model
    events = list(stream_generate(model, tokenizer, "Hi", seed=0))
    passes = [e for e in events if isinstance(e, PassEvent)]
    assert passes[0].max_steps == GENERATION["max_denoising_steps"]
    assert isinstance(events[-1], FinishEvent) and events[-1].result.stats.canvases == 1


def test_a_turn_goes_through_the_front_door(chat_model, monkeypatch):
    """A chat turn gets what every generation gets: its own peak memory, the resolved config, the
    answer decoded once, and the wired-memory context (counted here through the api module)."""
    from dgemma_mlx import api

    model, tokenizer = chat_model
    entered = []
    real_wired = api._wired

    def counting(m):
        entered.append(m)
        return real_wired(m)

    monkeypatch.setattr(api, "_wired", counting)
    session = ChatSession(model, tokenizer, seed=1)
    session.set_params(max_denoising_steps=3)
    result = next(e.result for e in session.stream("Hello there") if isinstance(e, FinishEvent))
    assert entered == [model]
    assert result.config == session.config and result.config.max_denoising_steps == 3
    assert result.stats.peak_memory_gb > 0 and result.finish_reasons[0] in ("eos", "length")
    assert result.answer == tokenizer.split_thinking(tokenizer.decode(result.new_tokens[0], False))[1]
    assert session.messages[-1]["content"] == tokenizer.decode(tokenizer.encode(result.answer, False)).strip()


def test_interrupted_turn_keeps_its_committed_tokens(chat_model, monkeypatch):
    """Ctrl-C after the first canvas of a longer answer (#22): the user turn and the committed tokens
    stay in the history; the interrupted turn's cache does not, and the next turn encodes only what the
    kept cache lacks."""
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, seed=1)
    session.config = session.config.replace_explicit(eos_token_id=None, stability_threshold=None)
    session.ask("Hi")
    messages, cached = list(session.messages), session.cached_tokens
    stream = session.stream("Tell me a long story", max_new_tokens=3 * model.canvas_length)
    committed = None
    for event in stream:
        if isinstance(event, CanvasEvent):
            committed = event.tokens[0].tolist()
            break  # the user pressed Ctrl-C after the first canvas
        assert not isinstance(event, FinishEvent)
    stream.close()
    assert committed is not None and len(committed) == model.canvas_length
    assert session.messages == messages and session.cached_tokens == cached  # closing alone keeps nothing

    kept = session.keep_partial("Tell me a long story", committed)
    stop = set(tokenizer.eos_token_ids)
    before_eos = committed[: next((k for k, t in enumerate(committed) if t in stop), len(committed))]
    expected = [t for t in before_eos if t != tokenizer.pad_token_id]
    answer = tokenizer.split_thinking(tokenizer.decode(expected, False))[1]
    content = tokenizer.decode(tokenizer.encode(answer, False)).strip()
    assert content  # seed 1 commits readable text on the first canvas
    assert kept == len(expected) > 0
    assert session.messages == [
        *messages,
        {"role": "user", "content": "Tell me a long story"},
        {"role": "assistant", "content": content},
    ]
    assert session.cached_tokens == cached  # the interrupted turn's cache was not kept

    calls = record_encodes(model, monkeypatch)
    session.ask("Go on")
    full_ids = session.render(session.messages[:-1])
    assert calls[0] == len(full_ids) - cached  # only what the kept cache lacks was encoded
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * (len(session.messages) // 2)


def test_keep_partial_with_nothing_committed_keeps_nothing(chat_model):
    model, tokenizer = chat_model
    session = ChatSession(model, tokenizer, seed=1)
    assert session.keep_partial("Hi", []) == 0 and session.messages == []
    eos = min(tokenizer.eos_token_ids)
    assert session.keep_partial("Hi", [eos, *tokenizer.encode("hello", False)]) == 0  # after EOS: nothing
    assert session.messages == []
