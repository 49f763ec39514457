"""Our exact pass against mlx-vlm's DiffusionGemma port, on the same checkpoint, in one process.

Issue #21 asks for our exact pass at <= 0.7x mlx-vlm's. Both sides read one random checkpoint at the
`mid` geometry (vocab 32768, hidden 512, 6 layers, 8 experts top-2, canvas 256), written once as
safetensors in the public layout (fused `experts.gate_up_proj`, which is what mlx-vlm's converter writes
and our loader reads) with the released soft-cap 30. For 4-bit, both float models are quantized in
memory by the same predicate (our `mixed` recipe: experts 4-bit, embedding/attention/MLPs 8-bit, router
float; affine, group 64), so the weights are bit-identical on both sides.

What is timed, interleaved round by round (ours, theirs, ours, theirs, ...) so that drift on a loaded
machine hits both alike:
- exact pass: one canvas of `--passes` passes through each project's own generation loop: ours
  through `dgemma_mlx.generate` (entropy-bound sampler, t 0.8 -> 0.4 schedule, no adaptive stopping,
  EOS off), theirs through `mlx_vlm.generate.diffusion.stream_diffusion_generate` (its entropy-bound
  sampler, temperature 1, full canvas, the same schedule, no stopping config); each side's own
  generation time (after the prompt) divided by the passes;
- forward: the decoder alone, from canvas ids and the previous pass's probabilities to soft-capped
  logits (the probabilities' soft embedding included on both sides; the softmax that made them not),
  timed on its second consecutive run.
Each timed call starts from an empty MLX buffer cache, as both generation loops leave it.

mlx-vlm is a benchmark-only contender (a dev dependency of the tests); nothing in dgemma_mlx imports
it. Run with OpenBLAS for realistic CPU matmuls:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 \
        python benchmarks/vs_mlx_vlm.py [--passes 6] [--rounds 3] [--precision float32,4bit]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPT = 128
SOFTCAP = 30.0  # the released model's; the `mid` geometry has none, mlx-vlm always applies one
T_MIN, T_MAX, ENTROPY_BOUND = 0.4, 0.8, 0.1
_SPLIT_EXPERT = re.compile(r"(.+\.experts)\.switch_glu\.(gate_proj|up_proj|down_proj)\.weight")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=6, help="passes per canvas (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default 3)")
    parser.add_argument("--precision", default="float32,4bit", help="float32 and/or 4bit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    args.precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if bad := [p for p in args.precisions if p not in ("float32", "4bit")]:
        parser.error(f"unknown precision {bad[0]!r} (choose float32, 4bit)")
    if args.passes < 2 or args.rounds < 1:
        parser.error("--passes must be >= 2 and --rounds >= 1")
    return args


# -- the checkpoint --------------------------------------------------------------------------------------
def write_checkpoint(directory: Path, seed: int) -> Path:
    """Random float32 weights at the `mid` geometry, public layout, legacy config keys (mlx-vlm 0.7.10
    reads `global_head_dim` / `num_global_key_value_heads`, not `per_layer_config`), and no vision
    tower (an explicit null: mlx-vlm builds a default one when the key is missing)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from dgemma_mlx.bench_models import random_model
    from dgemma_mlx.geometry import GEOMETRIES, geometry_config, parse_precision

    config = geometry_config("mid")
    model = random_model(config, parse_precision("float32", "float32"), seed)
    params = dict(tree_flatten(model.parameters()))
    weights = {}
    for key, value in params.items():
        match = _SPLIT_EXPERT.fullmatch(key)
        if match is None:
            weights[key] = value
        elif match.group(2) == "down_proj":
            weights[f"{match.group(1)}.down_proj.weight"] = value
        elif match.group(2) == "gate_proj":  # gate rows first, then up
            up = params[f"{match.group(1)}.switch_glu.up_proj.weight"]
            weights[f"{match.group(1)}.gate_up_proj.weight"] = mx.concatenate([value, up], axis=-2)
    mx.save_safetensors(str(directory / "model.safetensors"), weights)
    text = {
        **GEOMETRIES["mid"].text,
        "final_logit_softcapping": SOFTCAP,
        "rope_parameters": config.text.rope_parameters,
        "max_position_embeddings": config.text.max_position_embeddings,
        "rms_norm_eps": config.text.rms_norm_eps,
    }
    raw = {"model_type": "diffusion_gemma", "canvas_length": 256, "text_config": text, "vision_config": None}
    (directory / "config.json").write_text(json.dumps(raw, indent=1))
    return directory


def load_both(directory: Path, precision: str):
    """(ours, theirs) from the same files; 4-bit: both quantized by our `mixed` predicate."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_vlm.utils import load_model as vlm_load

    from dgemma_mlx.loading import load_model
    from dgemma_mlx.quantization import quantize_model, recipe_predicate

    ours, _ = load_model(directory)
    theirs = vlm_load(directory)
    if precision == "4bit":
        quantize_model(ours, 4, 64, "affine", "mixed")
        nn.quantize(theirs, class_predicate=recipe_predicate("mixed", 4, 64, "affine"))
    theirs.config.generation_config = {  # its defaults, spelled out: no adaptive stopping
        "sampler_config": {"entropy_bound": ENTROPY_BOUND},
        "linear_temperature_schedule_config": {"t_min": T_MIN, "t_max": T_MAX},
    }
    mx.eval(ours.parameters(), theirs.parameters())
    return ours, theirs


# -- exact passes ----------------------------------------------------------------------------------------
class _Detokenizer:
    last_segment = ""

    def reset(self) -> None: ...

    def add_token(self, token: int, skip_special_token_ids=()) -> None: ...

    def finalize(self) -> None: ...


class _NoTextTokenizer:
    """What mlx-vlm's diffusion loop asks of a tokenizer, minus the text: ids are all we time."""

    detokenizer = _Detokenizer()

    def stopping_criteria(self, token: int) -> bool:
        return False


def ours_pass_ms(model, prompt: list[int], passes: int, seed: int) -> float:
    from dgemma_mlx import generate
    from dgemma_mlx.generation_config import GenerationConfig
    from dgemma_mlx.noise import MLXNoise

    config = GenerationConfig(
        max_new_tokens=model.canvas_length,
        max_denoising_steps=passes,
        entropy_bound=ENTROPY_BOUND,
        t_min=T_MIN,
        t_max=T_MAX,
    ).replace_explicit(
        eos_token_id=(), pad_token_id=None, stability_threshold=None, confidence_threshold=None
    )
    result = generate(model, None, prompt, config=config, noise=MLXNoise(seed))
    assert result.stats.passes == [passes], result.stats.passes
    return 1e3 * result.stats.generation_time / passes


def theirs_pass_ms(model, prompt: list[int], passes: int) -> float:
    import mlx.core as mx
    from mlx_vlm.generate.diffusion import stream_diffusion_generate

    tokenizer = _NoTextTokenizer()
    last = None
    for last in stream_diffusion_generate(  # noqa: B007 - the last result carries the timings
        model,
        tokenizer,
        tokenizer,
        mx.array([prompt]),
        None,
        None,
        max_tokens=model.config.canvas_length,
        skip_special_token_ids=[],
        temperature=1.0,
        max_denoising_steps=passes,
        diffusion_full_canvas=True,
        diffusion_sampler="entropy-bound",
    ):
        pass
    assert last is not None and last.diffusion_denoising_steps == passes
    return 1e3 * last.generation_tokens / last.generation_tps / passes


# -- the forward alone -----------------------------------------------------------------------------------
class Forwards:
    """Both decoders on one prompt cache each and one canvas, with the same self-conditioning input."""

    def __init__(self, ours, theirs, prompt: list[int], seed: int):
        import mlx.core as mx

        from dgemma_mlx.engine import encode

        self.ours, self.theirs = ours, theirs
        self.canvas = mx.random.randint(0, ours.vocab_size, (1, ours.canvas_length), key=mx.random.key(seed))
        self.our_cache = ours.make_cache(1)
        encode(ours, mx.array([prompt]), self.our_cache)
        self.their_cache = theirs.make_cache()
        theirs.diffusion_prefill_cache(
            mx.array([prompt]),
            attention_mask=None,
            cache=self.their_cache,
            pixel_values=None,
            mm_token_type_ids=None,
            prefill_step_size=None,
            chunk_prefill=False,
        )
        self.masks = theirs.diffusion_decoder_masks(self.canvas, self.their_cache, None)
        first = ours.decode(self.canvas, self.our_cache)
        their_first = theirs.diffusion_decoder_logits(self.canvas, self.their_cache, None, self.masks)
        self.max_diff = mx.abs(first - their_first.astype(mx.float32)).max().item()
        self.probs = mx.softmax(first, axis=-1)
        mx.eval(self.probs)

    def ours_ms(self) -> float:
        import mlx.core as mx

        start = time.perf_counter()
        mx.eval(self.ours.decode(self.canvas, self.our_cache, self_conditioning_probs=self.probs))
        return 1e3 * (time.perf_counter() - start)

    def theirs_ms(self) -> float:
        import mlx.core as mx
        import mlx.nn as nn

        decoder = self.theirs.model.decoder
        start = time.perf_counter()
        emb = decoder.embed_tokens
        if isinstance(emb, nn.QuantizedEmbedding):
            soft = mx.quantized_matmul(
                self.probs,
                emb.weight,
                emb.scales,
                emb.biases,
                transpose=False,
                group_size=emb.group_size,
                bits=emb.bits,
                mode=emb.mode,
            )
        else:
            soft = self.probs @ emb.weight
        hidden = decoder(
            self.canvas,
            cache=self.their_cache,
            self_conditioning_embeddings=soft * decoder.embed_scale,
            decoder_attention_mask=self.masks,
        )
        mx.eval(self.theirs._softcap(emb.as_linear(hidden)))
        return 1e3 * (time.perf_counter() - start)


def warm(forward) -> float:
    """A forward timed after one untimed run, so neither side pays the other's freed buffers."""
    forward()
    return forward()


# -- the run -----------------------------------------------------------------------------------------------
def measure(directory: Path, precision: str, args: argparse.Namespace) -> dict:
    import mlx.core as mx

    ours, theirs = load_both(directory, precision)
    prompt = mx.random.randint(3, ours.vocab_size, (PROMPT,), key=mx.random.key(args.seed)).tolist()
    forwards = Forwards(ours, theirs, prompt, args.seed)
    ours_pass_ms(ours, prompt, 2, args.seed)  # warm-up: compiled functions, buffer cache
    theirs_pass_ms(theirs, prompt, 2)
    forwards.ours_ms(), forwards.theirs_ms()
    times: dict[str, list[float]] = {"ours_pass": [], "theirs_pass": [], "ours_fwd": [], "theirs_fwd": []}
    timed = {
        "ours_pass": lambda: ours_pass_ms(ours, prompt, args.passes, args.seed),
        "theirs_pass": lambda: theirs_pass_ms(theirs, prompt, args.passes),
        "ours_fwd": lambda: warm(forwards.ours_ms),
        "theirs_fwd": lambda: warm(forwards.theirs_ms),
    }
    for _ in range(args.rounds):
        for name, run in timed.items():
            mx.clear_cache()  # an empty buffer cache for each side, as both loops leave it
            times[name].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "precision": precision,
        **{f"{k}_ms": round(v, 1) for k, v in med.items()},
        "pass_ratio": round(med["ours_pass"] / med["theirs_pass"], 3),
        "forward_ratio": round(med["ours_fwd"] / med["theirs_fwd"], 3),
        "max_abs_logit_diff": forwards.max_diff,
    }


def main() -> int:
    args = parse_args()
    import mlx.core as mx

    rows = []
    with tempfile.TemporaryDirectory(prefix="dgemma-vs-vlm-") as tmp:
        directory = write_checkpoint(Path(tmp), args.seed)
        for precision in args.precisions:
            rows.append(measure(directory, precision, args))
            mx.clear_cache()
    setup = {
        "geometry": "mid",
        "prompt": PROMPT,
        "canvas": 256,
        "passes": args.passes,
        "rounds": args.rounds,
        "statistic": "median",
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
    }
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}))
        return 0
    print("  ".join(f"{k}={v}" for k, v in setup.items()))
    print(
        f"{'precision':<10}{'ours pass':>11}{'vlm pass':>10}{'ratio':>7}{'ours fwd':>10}{'vlm fwd':>9}"
        f"{'ratio':>7}{'max |dlogit|':>14}"
    )
    for r in rows:
        print(
            f"{r['precision']:<10}{r['ours_pass_ms']:>11}{r['theirs_pass_ms']:>10}{r['pass_ratio']:>7}"
            f"{r['ours_fwd_ms']:>10}{r['theirs_fwd_ms']:>9}{r['forward_ratio']:>7}{r['max_abs_logit_diff']:>14.2e}"
        )
    print("ms per pass / per forward, medians; ratio = ours / mlx-vlm's (lower is better for us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
