"""Time per denoising pass, and how much of it is spent outside the model forward.

Builds a random mid-size DiffusionGemma (same code path as the real model: encoder cache, MoE,
self-conditioning, the entropy-bound sampler) and runs the block-diffusion engine on it, then times
the decoder forward alone on the same inputs. The difference is sampler + bookkeeping + host syncs,
which must stay under 5% of a pass.

    python benchmarks/pass_time.py [--hidden 1024 --layers 8 --vocab 32768 --canvas 256 --passes 12]

On Linux, preload OpenBLAS for realistic CPU numbers (README, Development).
"""

from __future__ import annotations

import argparse
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.engine import block_diffusion
from dgemma_mlx.events import FinishEvent, PassEvent
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.model import Model
from dgemma_mlx.noise import MLXNoise


def build(args) -> Model:
    head = args.hidden // 8
    layer_types = ["sliding_attention"] * (args.layers - 1) + ["full_attention"]
    config = ModelConfig.from_dict(
        {
            "model_type": "diffusion_gemma",
            "canvas_length": args.canvas,
            "text_config": {
                "vocab_size": args.vocab,
                "hidden_size": args.hidden,
                "intermediate_size": args.hidden,
                "moe_intermediate_size": args.hidden // 4,
                "num_hidden_layers": args.layers,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "head_dim": head,
                "global_head_dim": 2 * head,
                "num_global_key_value_heads": 1,
                "num_experts": args.experts,
                "top_k_experts": args.top_k,
                "sliding_window": 1024,
                "layer_types": layer_types,
            },
        }
    )
    model = Model(config)
    mx.eval(model.parameters())
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--canvas", type=int, default=256)
    p.add_argument("--prompt", type=int, default=512)
    p.add_argument("--passes", type=int, default=12)
    args = p.parse_args()

    model = build(args)
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    print(
        f"device {mx.default_device()}, {n_params / 1e6:.0f}M params, "
        f"canvas {args.canvas}, vocab {args.vocab}"
    )
    prompt = np.random.default_rng(0).integers(3, args.vocab, size=args.prompt).tolist()
    # Never stop early and never hit EOS, so every canvas runs exactly --passes passes.
    config = GenerationConfig(
        max_new_tokens=2 * args.canvas,
        max_denoising_steps=args.passes,
        stability_threshold=None,
        confidence_threshold=None,
        eos_token_id=None,
    )
    # warm-up (first-call kernel setup) on a short run
    for _ in block_diffusion(
        model, [prompt[:16]], config.replace(max_new_tokens=args.canvas, max_denoising_steps=2), MLXNoise(0)
    ):
        pass

    mx.reset_peak_memory()
    pass_times: list[float] = []
    last = None
    result = None
    for event in block_diffusion(model, [prompt], config, MLXNoise(1)):
        now = time.perf_counter()
        if isinstance(event, PassEvent):
            if last is not None and event.pass_index > 1:
                pass_times.append(now - last)
            last = now
        elif isinstance(event, FinishEvent):
            result = event.result
        else:
            last = None  # the next pass includes encoding the committed canvas; timed separately
    peak = mx.get_peak_memory() / 1e9

    # The forward alone, on a cache of the same size, with self-conditioning as in passes 2+.
    cache = model.make_cache(1)
    model.encode(mx.array([prompt]), cache)
    mx.eval(cache.state())
    canvas = mx.random.randint(0, args.vocab, (1, args.canvas))
    sc = model.decode(canvas, cache).astype(model.dtype)
    mx.eval(sc)
    forward_times = []
    for _ in range(max(3, len(pass_times) // 2)):
        t0 = time.perf_counter()
        mx.eval(model.decode(canvas, cache, sc))
        forward_times.append(time.perf_counter() - t0)
    from dgemma_mlx.sampler import accept_by_entropy, tempered_scores

    raw = model.decode(canvas, cache, sc)
    mx.eval(raw)
    noise = MLXNoise(2)
    sampler_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        z, ent, sample, draft, conf = tempered_scores(
            raw, mx.array(0.6), noise.gumbel(1, args.canvas, args.vocab)
        )
        x = mx.where(accept_by_entropy(ent, 0.1), sample, noise.canvas(1, args.canvas, args.vocab))
        mx.eval(x, z.astype(model.dtype), draft, conf)
        sampler_times.append(time.perf_counter() - t0)
    enc_times = []
    block = mx.array([prompt[: args.canvas]])
    for _ in range(3):
        c = cache.copy()
        t0 = time.perf_counter()
        model.encode(block, c)
        mx.eval(c.state())
        enc_times.append(time.perf_counter() - t0)

    per_pass = float(np.median(pass_times))
    forward = float(np.median(forward_times))
    outside = max(0.0, per_pass - forward) / per_pass
    print(f"time per denoising pass     {per_pass * 1e3:8.1f} ms (median of {len(pass_times)})")
    print(f"decoder forward alone       {forward * 1e3:8.1f} ms")
    print(
        f"outside the forward         {outside * 100:8.1f} %  (sampler, bookkeeping, host syncs; target < 5%)"
    )
    sampler = float(np.median(sampler_times))
    print(
        f"  of which sampler maths    {sampler * 1e3:8.1f} ms  "
        f"(softmax/entropy/Gumbel draw over {args.canvas}x{args.vocab})"
    )
    print(f"  bookkeeping + host syncs  {max(0.0, per_pass - forward - sampler) * 1e3:8.1f} ms")
    print(f"encoder time per canvas     {float(np.median(enc_times)) * 1e3:8.1f} ms ({args.canvas} tokens)")
    print(f"prompt encode ({args.prompt} tok)      {result.stats.prompt_time * 1e3:8.1f} ms")
    print(f"peak memory                 {peak:8.2f} GB")


if __name__ == "__main__":
    main()
