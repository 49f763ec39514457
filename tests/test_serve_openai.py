"""`dgemma serve` through the official `openai` client: every route, streaming and not, the thinking
split, and the errors a client can provoke, against a live server on 127.0.0.1.

Answers are checked against the library itself (`generate` in this process, same model and seed):
the server must give exactly what the front door gives for that request.
"""

from __future__ import annotations

import openai
import pytest
from serve_helpers import KEY, raw, running_server, thinking_model

from dgemma_mlx import generate, load

MESSAGES = [{"role": "user", "content": "tell me a story about the sky"}]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return thinking_model(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="module")
def lib(model_path):
    return load(model_path)


@pytest.fixture(scope="module")
def server(model_path):
    args = [
        "--api-key",
        KEY,
        "--max-prompt-tokens",
        "64",
        "--max-body-kb",
        "16",
        "--served-model-name",
        "tiny",
    ]
    with running_server(model_path, *args) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base, api_key=KEY, max_retries=0, timeout=60)


def chat(client, **kwargs):
    return client.chat.completions.create(model="tiny", messages=kwargs.pop("messages", MESSAGES), **kwargs)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "dgemma-mlx"


def test_chat_answer_is_the_front_doors_answer(client, lib):
    model, tokenizer = lib
    response = chat(client, seed=3, max_tokens=16)
    expected = generate(model, tokenizer, MESSAGES, seed=3, max_new_tokens=16)
    choice = response.choices[0]
    assert choice.message.content == expected.answers[0]
    assert choice.finish_reason == ("stop" if expected.finish_reasons[0] == "eos" else "length")
    usage = response.usage
    assert usage.prompt_tokens == len(tokenizer.render_chat(MESSAGES))
    assert usage.completion_tokens == len(expected.new_tokens[0])
    assert usage.model_extra["dgemma"]["passes"] == expected.stats.passes[0]
    assert usage.model_extra["dgemma"]["seed"] == 3


def test_streamed_chat_adds_up_to_the_whole_answer(client):
    whole = chat(client, seed=5, max_tokens=24).choices[0]
    chunks = list(chat(client, seed=5, max_tokens=24, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == whole.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    content_chunks = [d for d in deltas if d.content]
    assert 1 <= len(content_chunks) <= 3  # one delta per committed canvas (24 tokens: 3 canvases of 8)


def test_completions_raw_text_streamed_and_not(client, lib):
    model, tokenizer = lib
    expected = generate(model, tokenizer, "the sky is", chat_template=False, seed=2, max_new_tokens=16)
    whole = client.completions.create(model="tiny", prompt="the sky is", seed=2, max_tokens=16)
    assert whole.choices[0].text == expected.texts[0]
    streamed = client.completions.create(
        model="tiny", prompt="the sky is", seed=2, max_tokens=16, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected.texts[0]


def test_n_choices_are_the_requests_seeded_seed_plus_i(client):
    both = chat(client, seed=10, n=2, max_tokens=16)
    second = chat(client, seed=11, max_tokens=16)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].message.content == second.choices[0].message.content


def test_streamed_choices_add_up_to_the_whole_choices(client):
    whole = chat(client, seed=20, n=3, max_tokens=16).choices
    texts = {0: "", 1: "", 2: ""}
    finishes = {}
    for chunk in chat(client, seed=20, n=3, max_tokens=16, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert [texts[i] for i in range(3)] == [c.message.content for c in whole]
    assert [finishes[i] for i in range(3)] == [c.finish_reason for c in whole]


def test_thinking_goes_to_reasoning_content_not_content(client, lib):
    model, tokenizer = lib
    think = {"chat_template_kwargs": {"enable_thinking": True}}
    for seed in range(40):  # about one seed in four thinks before answering (serve_helpers.thinking_model)
        expected = generate(model, tokenizer, MESSAGES, seed=seed, max_new_tokens=16, enable_thinking=True)
        if expected.thinking[0] and expected.answers[0]:
            break
    else:
        pytest.fail("no seed in 40 gave both thoughts and an answer")
    message = chat(client, seed=seed, max_tokens=16, extra_body=think).choices[0].message
    assert message.model_extra["reasoning_content"] == expected.thinking[0]
    assert message.content == expected.answers[0]
    assert "<|channel>" not in message.content and expected.thinking[0] not in message.content
    chunks = [c for c in chat(client, seed=seed, max_tokens=16, extra_body=think, stream=True) if c.choices]
    reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in chunks)
    assert reasoning == expected.thinking[0]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.answers[0]


def test_stop_string_cuts_the_answer(client):
    for seed in range(7, 30):
        full = chat(client, seed=seed, max_tokens=16).choices[0].message.content
        words = full.split()
        if len(words) >= 3 and words[2] not in words[:2]:
            break
    else:
        pytest.fail("no seed gave an answer of three words")
    stop = " " + words[2]
    cut = chat(client, seed=seed, max_tokens=16, stop=[stop]).choices[0]
    assert cut.message.content == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = chat(client, seed=seed, max_tokens=16, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == cut.message.content


def test_pass_frames_only_when_asked(client):
    plain = [c for c in chat(client, seed=1, max_tokens=8, stream=True)]
    assert not any(c.model_extra.get("dgemma_pass") for c in plain)
    chunks = list(chat(client, seed=1, max_tokens=8, stream=True, extra_body={"stream_passes": True}))
    frames = [c.model_extra["dgemma_pass"] for c in chunks if c.model_extra.get("dgemma_pass")]
    assert len(frames) == chunks[-1].usage.model_extra["dgemma"]["passes"]
    assert all(len(f["tokens"]) == 8 and len(f["text"]) == 8 and f["canvas"] == 0 for f in frames)
    assert [f["pass"] for f in frames] == list(range(1, len(frames) + 1))


def test_errors_are_openai_error_objects(client, server):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as long:
        chat(client, messages=[{"role": "user", "content": "the " * 80}])
    assert long.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError) as wrong:
        openai.OpenAI(base_url=server.base, api_key="nope", max_retries=0).models.list()
    assert wrong.value.code == "invalid_api_key"
    with pytest.raises(openai.BadRequestError) as temperature:
        chat(client, temperature=0.2)
    assert (temperature.value.code, temperature.value.param) == ("unsupported_value", "temperature")
    with pytest.raises(openai.BadRequestError) as logprobs:
        chat(client, logprobs=True)
    assert logprobs.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as steps:
        chat(client, extra_body={"max_denoising_steps": 0})
    assert steps.value.param == "max_denoising_steps"
    with pytest.raises(openai.BadRequestError) as typo:
        chat(client, extra_body={"max_denoising_step": 4})
    assert "max_denoising_step" in typo.value.message


def test_malformed_requests_never_get_a_traceback(server):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = f"{server.base}/chat/completions"
    cases = [
        (b"{not json", 400),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": NaN}', 400),
        (b"[1, 2]", 400),
        (b'{"model": "tiny", "messages": "hi"}', 400),
        (b'{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}', 400),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
        (b'{"model": "tiny", "messages": [], "pad": "' + b"x" * 20000 + b'"}', 413),
    ]
    for body, status in cases:
        code, answer = raw("POST", url, body, auth)
        assert code == status, (body[:60], answer)
        assert answer["error"]["message"] and "Traceback" not in answer.get("_raw", "")
    code, answer = raw("POST", url, b"{}", {"Content-Type": "application/json"})
    assert code == 401 and answer["error"]["code"] == "missing_api_key"
    code, answer = raw("GET", f"{server.url}/v2/nothing")
    assert code == 404 and "error" in answer
    code, health = raw("GET", f"{server.url}/health")
    assert code == 200 and health["status"] == "ok" and health["model"] == "tiny"
