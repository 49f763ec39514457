"""The server's exactness claims, checked without a server: bit for bit, on the tiny word model.

- Rows of different lengths stacked into one decoder pass (`server.frames`) give each row exactly
  the logits of its lone pass; with the engine's own left padding they do not (which is why the
  scheduler does not use it).
- Encoding a prompt in two pieces (a prefix cache hit) gives the same cache as encoding it at once.
- The scheduler: a row removed mid-canvas (its client left) leaves the other rows' tokens unchanged,
  and every row equals its lone run through the front door with its seed.
"""

from __future__ import annotations

import queue

import mlx.core as mx
import numpy as np
import pytest

from dgemma_mlx import generate
from dgemma_mlx.api import prompt_to_ids, resolve_config
from dgemma_mlx.engine import encode_prompt
from dgemma_mlx.server.frames import FramedModel, stack_caches, take_rows
from dgemma_mlx.server.protocol import ApiError, Limits, parse_chat, parse_completion
from dgemma_mlx.server.run import is_local
from dgemma_mlx.server.scheduler import Committed, Failed, JobSpec, PassFrame, Scheduler

PROMPTS = [
    "hi",
    "tell me a story",
    "why is the sky blue ?",
    "what is the sun and the moon and a star at night",
]


def _cache(model, ids):
    cache = model.make_cache(1)
    model.encode(mx.array([ids]), cache)
    return cache


def test_stacked_rows_of_any_length_get_their_lone_logits_bit_for_bit(loaded):
    model, tokenizer = loaded
    ids = prompt_to_ids(tokenizer, PROMPTS)
    assert len({len(p) for p in ids}) == len(ids)  # all different lengths, some past the window
    caches = [_cache(model, p) for p in ids]
    canvas = mx.random.randint(0, model.vocab_size, (len(ids), model.canvas_length), key=mx.random.key(1))
    probs = mx.softmax(mx.random.normal((len(ids), model.canvas_length, model.vocab_size)), axis=-1)
    framed = FramedModel(model)
    stacked = stack_caches(caches)
    together = np.array(framed.decode(canvas, stacked, self_conditioning_probs=probs))
    for b, cache in enumerate(caches):
        alone = np.array(model.decode(canvas[b : b + 1], cache, self_conditioning_probs=probs[b : b + 1]))
        assert np.array_equal(alone[0], together[b]), PROMPTS[b]
    kept = np.array(framed.decode(canvas[mx.array([0, 3])], take_rows(stacked, [0, 3])))
    assert np.array_equal(kept, np.array(framed.decode(canvas, stacked))[[0, 3]])
    # The engine's left padding shifts a padded row's positions: its logits move (by rounding).
    padded = encode_prompt(model, ids, resolve_config(model, tokenizer))
    shifted = np.array(model.decode(canvas, padded.cache))
    assert not all(np.array_equal(shifted[b], together[b]) for b in range(len(ids) - 1))


def test_a_prompt_encoded_in_two_pieces_is_the_prompt_encoded_at_once(loaded):
    model, tokenizer = loaded
    ids = prompt_to_ids(tokenizer, PROMPTS[3])[0]
    whole = _cache(model, ids)
    for split in (1, 3, len(ids) - 1):
        pieces = _cache(model, ids[:split])
        model.encode(mx.array([ids[split:]]), pieces)
        assert all(
            np.array_equal(np.array(a), np.array(b))
            for a, b in zip(whole.state(), pieces.state(), strict=True)
        )


def _submit(scheduler, specs) -> list[queue.Queue]:
    queues = []
    for spec in specs:
        q: queue.Queue = queue.Queue()
        scheduler.submit(spec, q.put)
        queues.append(q)
    return queues


def _finals(queues) -> dict[int, Committed]:
    """Each job's final Committed event."""
    out = {}
    for i, q in enumerate(queues):
        while True:
            event = q.get(timeout=60)
            assert not isinstance(event, Failed), event
            if isinstance(event, Committed) and event.final:
                out[i] = event
                break
    return out


def _run(scheduler, specs) -> dict[int, Committed]:
    return _finals(_submit(scheduler, specs))


def test_scheduler_rows_equal_their_lone_runs_even_when_a_neighbour_leaves(loaded):
    model, tokenizer = loaded
    config = resolve_config(model, tokenizer).replace(max_new_tokens=32)
    ids = prompt_to_ids(tokenizer, PROMPTS)
    scheduler = Scheduler(model, config, max_batch=8, prefill_chunk=3)  # prompts encoded 3 tokens a turn
    scheduler.start()
    try:
        left: list[PassFrame] = []

        def leave_once_joined(event) -> None:  # on the model thread: the first pass of a shared canvas
            if isinstance(event, PassFrame) and event.rows > 1 and event.pass_index == 1 and not left:
                left.append(event)
                leaver.cancel()  # it leaves before the canvas's second pass

        specs = [JobSpec([p], [40 + i], config) for i, p in enumerate(ids)]
        queues = _submit(scheduler, specs)
        leaver_spec = JobSpec([ids[2]], [7], config.replace(max_new_tokens=2048), want_passes=True)
        leaver = scheduler.submit(leaver_spec, leave_once_joined)  # admitted with (some of) the others
        together = _finals(queues)
        assert left and scheduler.snapshot()["rows_cancelled"] == 1
    finally:
        scheduler.close()  # before the lone runs: one thread drives MLX at a time
    for i, p in enumerate(ids):
        lone = generate(model, tokenizer, p, seed=40 + i, max_new_tokens=32)
        assert together[i].tokens == lone.new_tokens[0], PROMPTS[i]
        assert together[i].passes == lone.stats.passes[0]
    assert max(together[i].batch_rows for i in range(len(ids))) >= 2


def test_max_tokens_is_a_hard_cap(loaded):
    model, tokenizer = loaded
    config = resolve_config(model, tokenizer)
    scheduler = Scheduler(model, config)
    scheduler.start()
    try:
        ids = prompt_to_ids(tokenizer, PROMPTS[1])
        out = _run(scheduler, [JobSpec(ids, [3], config, max_tokens=5), JobSpec(ids, [3], config)])
    finally:
        scheduler.close()
    full = out[1].tokens
    assert out[0].tokens == full[:5] and len(full) > 5
    assert out[0].reason == "length"


def test_request_bodies_are_checked_field_by_field(loaded):
    model, tokenizer = loaded
    config = resolve_config(model, tokenizer)
    limits = Limits(max_prompt_tokens=40, max_n=4)
    ok = {"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "hi"}]}]}
    parsed = parse_chat({**ok, "n": 3, "seed": 9, "t_max": 0.9}, "m", tokenizer, config, limits)
    assert parsed.seeds == [9, 10, 11] and parsed.config.t_max == 0.9 and len(parsed.prompts) == 3
    bad = [
        ({**ok, "n": 5}, "n"),
        ({**ok, "top_p": 0.5}, "top_p"),
        ({**ok, "tools": []}, "tools"),
        ({**ok, "stop": ["a"] * 5}, "stop"),
        ({**ok, "t_min": 0.9, "t_max": 0.5}, "t_min"),
        ({**ok, "stream": "yes"}, "stream"),
        ({**ok, "max_tokens": 0}, "max_tokens"),
        ({**ok, "response_format": {"type": "json_object"}}, "response_format"),
    ]
    for body, param in bad:
        with pytest.raises(ApiError) as error:
            parse_chat(body, "m", tokenizer, config, limits)
        assert error.value.status == 400 and error.value.param == param, body
    with pytest.raises(ApiError) as unknown:
        parse_chat({**ok, "model": "other"}, "m", tokenizer, config, limits)
    assert unknown.value.status == 404
    with pytest.raises(ApiError) as vocab:
        parse_completion({"model": "m", "prompt": [1, 500]}, "m", tokenizer, config, limits, 128)
    assert vocab.value.param == "prompt"
    assert parse_completion({"model": "m", "prompt": ["a", "b"], "n": 2}, "m", tokenizer, config, limits, 128)


def test_only_loopback_hosts_count_as_local():
    assert all(is_local(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(is_local(h) for h in ("0.0.0.0", "::", "192.168.1.4", "example.com"))
