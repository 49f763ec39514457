"""Concurrent requests share canvas batches, and a request's answer never depends on its batch.

Against a live `dgemma serve`: 16 streaming clients at once (prompts of different lengths) each get
exactly the answer the same request gets alone with its seed; a client killed mid-stream frees its
row while the others go on; a conversation's next turn continues its cached prompt and still gives
the answer a full encoding gives; a full queue is answered 429 with Retry-After.
"""

from __future__ import annotations

import threading
import time

import openai
import pytest
from serve_helpers import raw, running_server, thinking_model, wait_until

from dgemma_mlx import generate, load

WORDS = "tell me a story about the sky and the sun and the moon and why it is blue at night".split()


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join(WORDS[: 2 + i % 9])}]  # 9 different prompt lengths


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return thinking_model(tmp_path_factory.mktemp("serve-batch"))


@pytest.fixture(scope="module")
def server(model_path):
    with running_server(model_path, "--max-batch", "20") as live:
        yield live


def client_for(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base, api_key="unused", max_retries=0, timeout=120)


def model_name(server) -> str:
    return raw("GET", f"{server.url}/health")[1]["model"]


def streamed(client, name: str, i: int, out: dict, **kwargs) -> None:
    budget = 8 * (1 + i % 4)  # 1 to 4 canvases: rows leave the batch at different boundaries
    chunks = client.chat.completions.create(
        model=name, messages=messages(i), seed=100 + i, max_tokens=budget, stream=True, **kwargs
    )
    content, usage, finish = [], None, None
    for chunk in chunks:
        if chunk.choices:
            content.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        elif chunk.usage is not None:
            usage = chunk.usage
    out[i] = ("".join(content), finish, usage)


def test_sixteen_streams_each_equal_its_lone_run_and_a_killed_client_frees_its_row(server):
    client, name = client_for(server), model_name(server)
    # The victim cannot end on its own while the test runs: 2000 passes per canvas (it is never
    # confident enough to stop early), so its first canvas outlasts the test's first seconds. Its
    # settings put it in a batch of its own; removal from a shared batch mid-canvas is checked
    # in-process (test_serve_frames.py).
    slow = {"max_denoising_steps": 2000, "confidence_threshold": 1e-12}
    victim = client.chat.completions.create(
        model=name, messages=messages(3), seed=1, max_tokens=80, stream=True, extra_body=slow
    )
    next(iter(victim))  # admitted: its row is running
    together: dict[int, tuple] = {}
    threads = [threading.Thread(target=streamed, args=(client, name, i, together)) for i in range(16)]
    for t in threads:
        t.start()
    assert wait_until(lambda: raw("GET", f"{server.url}/health")[1]["rows_running"] >= 8, 30)
    victim.close()  # the client goes away mid-stream
    start = time.monotonic()
    ok = wait_until(lambda: raw("GET", f"{server.url}/health")[1]["rows_cancelled"] == 1, 10)
    assert ok, str(raw("GET", f"{server.url}/health")[1])
    freed_after = time.monotonic() - start
    for t in threads:
        t.join(120)
    assert sorted(together) == list(range(16))
    alone: dict[int, tuple] = {}
    for i in range(16):  # the same requests, one at a time
        streamed(client, name, i, alone)
    for i in range(16):
        assert together[i][:2] == alone[i][:2], i
        assert together[i][2].completion_tokens == alone[i][2].completion_tokens
    shared = [together[i][2].model_extra["dgemma"]["batch_rows"] for i in range(16)]
    assert max(shared) >= 4, shared  # they really ran together
    assert all(alone[i][2].model_extra["dgemma"]["batch_rows"] == 1 for i in range(16))
    assert freed_after < 10
    health = raw("GET", f"{server.url}/health")[1]
    assert health["rows_running"] == 0 and health["rows_cancelled"] == 1


def test_rows_with_other_settings_run_in_their_own_batch(server):
    client, name = client_for(server), model_name(server)
    out: dict[int, tuple] = {}
    settings = {0: {"max_denoising_steps": 3}, 1: {"entropy_bound": 0.5}}
    threads = [
        threading.Thread(target=streamed, args=(client, name, i, out), kwargs={"extra_body": settings[i]})
        for i in settings
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    alone: dict[int, tuple] = {}
    for i in settings:
        streamed(client, name, i, alone, extra_body=settings[i])
        assert out[i][:2] == alone[i][:2]
        assert out[i][2].model_extra["dgemma"]["batch_rows"] == 1


def test_next_turn_continues_the_cached_prompt_exactly(server, model_path):
    client, name = client_for(server), model_name(server)
    model, tokenizer = load(model_path)
    first = [{"role": "user", "content": "why is the sky blue ?"}]
    answer = client.chat.completions.create(model=name, messages=first, seed=4, max_tokens=16)
    reply = answer.choices[0].message.content or "yes"
    second = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "tell me more"}]
    follow = client.chat.completions.create(model=name, messages=second, seed=5, max_tokens=16)
    cached = follow.usage.prompt_tokens_details.cached_tokens
    assert cached == len(tokenizer.render_chat(first)) and follow.usage.prompt_tokens > cached
    expected = generate(model, tokenizer, second, seed=5, max_new_tokens=16)  # encoded in one go
    assert follow.choices[0].message.content == expected.answers[0]


def test_a_full_queue_is_answered_429_with_retry_after(model_path):
    with running_server(model_path, "--max-batch", "1", "--max-queue", "1") as small:
        client, name = client_for(small), model_name(small)
        results: list = []

        def ask() -> None:
            try:
                client.chat.completions.create(model=name, messages=messages(1), max_tokens=160)
                results.append("ok")
            except openai.RateLimitError as e:
                results.append(e)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    refused = [r for r in results if r != "ok"]
    assert len(results) == 4 and refused and "ok" in results
    assert all(r.response.headers.get("retry-after") and r.code == "rate_limit_exceeded" for r in refused)


def test_a_client_that_gives_up_on_a_whole_response_frees_its_row(server):
    client, name = client_for(server), model_name(server)
    before = raw("GET", f"{server.url}/health")[1]["rows_cancelled"]
    slow = {"max_denoising_steps": 2000, "confidence_threshold": 1e-12}  # one canvas outlasts 1 s
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=1.0).chat.completions.create(
            model=name, messages=messages(2), seed=3, max_tokens=16, extra_body=slow
        )
    freed = lambda: raw("GET", f"{server.url}/health")[1]  # noqa: E731
    assert wait_until(lambda: freed()["rows_cancelled"] == before + 1 and freed()["rows_running"] == 0, 10)
