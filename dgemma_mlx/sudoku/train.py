"""Train the bundled Sudoku DiffusionGemma with the model's own recipe.

Recipe: the puzzle is the prompt (encoded causally into the cache, gradients flow through it), the 81
solved cells are the canvas. Each non-given canvas cell is replaced, with probability t ~ U(0, 1) per
row, by a token drawn uniformly from the whole vocabulary (the sampler's own noise); givens stay in
place because inference pins them, so training never spends capacity on cells the sampler never
asks about. Half of the batches take a second, self-conditioned pass fed with the first pass's
logits divided by a temperature T ~ U(t_min, t_max) (no gradient through them), exactly as the
sampler feeds its tempered logits back. The loss is cross-entropy on the non-given cells.
`--sc-chain N` lets that earlier pass be the last of a chain of 1..N passes, each self-conditioned on
the one before: the sampler's passes after its second are all of that kind, and a single earlier pass
never shows the model a self-conditioning input that came from a self-conditioned pass. `--rollout`
lets each earlier pass also rewrite the canvas as the sampler does (its own samples on the cells it
was surest of, fresh noise elsewhere), so the graded pass learns to correct the model's own mistakes.

Data: puzzles from a pool generated with `puzzles.generate_puzzle` (graded, unique solutions), each
drawn through a random Sudoku symmetry (digit relabelling, row/column moves within bands and stacks,
band/stack moves, transpose): validity, uniqueness and difficulty are kept while the pool's few
thousand puzzles become billions of distinct training examples. Difficulties are sampled with
`--mix` weights, not pool sizes, so the small hard pool is not over- or under-represented.

Speed: on MLX's CPU backend the transcendental functions dominate a step of this tiny model (tanh
~18 ns and exp ~12 ns per element against ~0.2 ns for a multiply), and GELU's tanh alone was about
a third of a step. `fast_kernels()` swaps, for training only, mlx-lm's GEGLU for a rational tanh
approximation with a hand-written backward (max abs error ~1e-4 against the exact GELU, invisible
to the model); inference always runs the unmodified model.

Creating the pool (each line {"p": puzzle, "s": solution}) and training:

    python -m dgemma_mlx.sudoku.train --make-pool POOL_DIR --pool-sizes 3000 1200 1500
    python -m dgemma_mlx.sudoku.train --pool POOL_DIR --out OUT --steps 3000 --batch 64 --seed 0

`--init DIR` warm-starts from a checkpoint (keeping its geometry and RoPE; `--grow-layers N` deepens it
by N layers that start as the identity); `--layers/--hidden/--experts/--heads` size a new model (the
defaults are the shipped geometry, grid RoPE included). The shipped weights' exact commands are in
assets/TRAINING.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import re
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from ..config import DEFAULT_ROPE, FULL, SLIDING, ModelConfig
from ..generation_config import GenerationConfig
from ..model import Model
from ..sampler import entropy, gumbel_sample, log_probs
from . import tokens as T
from .symmetry import Symmetry


def grid_rope(head_dim: int) -> dict:
    """Linear-scaled RoPE whose frequencies are 2*pi/9 * (4, 2, 1, 1/2, 1/4, ...) radians per position.

    Why: the model has no position embeddings, only RoPE, and with the default frequencies (1, 0.56,
    0.32, ... rad) "same column" (an offset that is a multiple of 9) has no simple form, so a small model
    learns the Sudoku constraints slowly and never precisely. With these frequencies one head can score
    cos(2pi*d/9) + cos(4pi*d/9) + cos(8pi*d/9), which is 3 at offsets d = 0 mod 9 and <= 0 elsewhere: a
    column comb; the slower ones can give rows and the prompt-to-canvas offset. Theta 2^(head_dim/2) makes
    each frequency half the one before; the factor (< 1, which transformers warns about but computes
    exactly as we do) lifts the fastest to 8pi/9. Measured: from scratch the training loss fell 1.15 ->
    0.88 at step 250 against the default RoPE (TRAINING.md).
    """
    return {"rope_type": "linear", "rope_theta": 2.0 ** (head_dim // 2), "factor": 9 / (8 * math.pi)}


def rope_parameters(sliding_head_dim: int) -> dict:
    """Both layer types spelled out, as transformers needs once `rope_parameters` is given: the grid RoPE
    on the sliding layers, the default one on the full-attention layer (the grid there did worse)."""
    return {SLIDING: grid_rope(sliding_head_dim), FULL: dict(DEFAULT_ROPE[FULL])}


SLIDING_HEAD_DIM = 32  # one value: the grid RoPE's theta is derived from it
MODEL_CONFIG = {
    "model_type": "diffusion_gemma",
    "architectures": ["DiffusionGemmaForBlockDiffusion"],
    "canvas_length": T.CANVAS_LENGTH,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "diffusion_gemma_text",
        "vocab_size": T.VOCAB_SIZE,
        "hidden_size": 128,
        "intermediate_size": 256,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": SLIDING_HEAD_DIM,
        "global_head_dim": 64,
        "num_global_key_value_heads": 1,
        "num_experts": 4,
        "top_k_experts": 2,
        "sliding_window": 256,
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        "max_position_embeddings": 1024,
        "pad_token_id": T.PAD,
        "bos_token_id": T.BOS,
        "eos_token_id": T.EOS,
        "use_bidirectional_attention": "vision",
        "rope_parameters": rope_parameters(SLIDING_HEAD_DIM),
    },
}

# <eos> never appears in a solved canvas, so a solution is never cut short by EOS padding.
GENERATION_CONFIG = {
    "max_new_tokens": T.CANVAS_LENGTH,
    "max_denoising_steps": 48,
    "sampler_config": {"_cls_name": "EntropyBoundSamplerConfig", "entropy_bound": 0.1},
    "t_min": 0.8,
    "t_max": 1.2,
    "stability_threshold": 1,
    "confidence_threshold": 0.005,
    "eos_token_id": [T.EOS],
    "pad_token_id": T.PAD,
}
DIFFICULTIES = ("easy", "medium", "hard")
POOL_SEEDS = {"easy": 1001, "medium": 1002, "hard": 1003}
EVAL_SEED = 777  # held out: never a pool seed; the benchmark uses yet another one


def model_config(
    layers: int | None = None, hidden: int | None = None, experts: int | None = None, heads: int | None = None
) -> dict:
    """The shipped geometry (MODEL_CONFIG) resized: one full-attention layer last, the rest sliding;
    dense MLP 2x hidden, experts 1x hidden, top-2 routing, query heads sharing KV heads in pairs, head
    dims as shipped (so more heads widen attention beyond `hidden`). None keeps a size.

    Bigger models are for machines with a GPU or Apple silicon. Per training step, from scratch, more
    heads, more layers and a wider model each learned faster than the shipped 4 x 128 (TRAINING.md, run 11).
    """
    text = dict(MODEL_CONFIG["text_config"])
    layers = text["num_hidden_layers"] if layers is None else layers
    hidden = text["hidden_size"] if hidden is None else hidden
    experts = text["num_experts"] if experts is None else experts
    heads = text["num_attention_heads"] if heads is None else heads
    if heads % 2:
        raise ValueError(f"needs an even number of heads (query heads share KV heads in pairs), got {heads}")
    text |= {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "moe_intermediate_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "num_experts": experts,
        "top_k_experts": min(2, experts),
        "layer_types": ["sliding_attention"] * (layers - 1) + ["full_attention"],
    }
    return {**MODEL_CONFIG, "text_config": text}


def grow(init: Path, extra: int) -> tuple[Model, dict]:
    """The checkpoint at `init` deepened by `extra` new sliding layers that start as the identity.

    Why: the shipped 4-layer model plateaued (TRAINING.md, run 7) and a bigger one trained from scratch
    is out of reach of a CPU; a grown model starts at the checkpoint's quality and only has to learn what
    the extra depth adds. A new layer's two residual branches end in RMSNorms whose gains start at zero
    (not its projections: an RMSNorm of a zero vector has a huge gradient), so its output is its input
    (layer scalars 1) in both the encoder and the decoder, while each gain's gradient is non-zero and
    wakes the layer up. New layers go in one after each of the last sliding layers, working backwards
    (4 -> 6: S S new S new F), so the full-attention layer stays last as the reference requires.
    """
    config = json.loads((init / "config.json").read_text())
    text = config["text_config"]
    types = text["layer_types"]
    sliding = [i for i, t in enumerate(types) if t == SLIDING][::-1]
    if not sliding:
        raise ValueError(f"{init} has no sliding-attention layer for new layers to follow")
    after = [sliding[k % len(sliding)] for k in range(extra)]
    order: list[int | None] = []
    for i in range(len(types)):
        order += [i] + [None] * after.count(i)
    text = text | {
        "num_hidden_layers": len(order),
        "layer_types": [SLIDING if i is None else types[i] for i in order],
    }
    config = config | {"text_config": text}
    model = Model(ModelConfig.from_dict(config))
    old = mx.load(str(init / "model.safetensors"))
    new = dict(tree_flatten(model.parameters()))

    position = {i: j for j, i in enumerate(order) if i is not None}

    def renumber(key: str) -> str:
        return re.sub(r"\.layers\.(\d+)\.", lambda m: f".layers.{position[int(m[1])]}.", key)

    moved = {renumber(k): v for k, v in old.items()}
    for j, i in enumerate(order):
        if i is None:
            for norm in ("post_attention_layernorm", "post_feedforward_layernorm"):
                key = f"model.decoder.layers.{j}.{norm}.weight"
                moved[key] = mx.zeros_like(new[key])
    model.load_weights(list((new | moved).items()))
    return model, config


# -- fast training kernels ---------------------------------------------------------------------------
_C = math.sqrt(2.0 / math.pi)


@mx.compile
def _tanh(u: mx.array) -> mx.array:
    """Padé [7/6] tanh, clipped where it stops being accurate; |error| < 1e-4, all mults and one divide."""
    u = mx.clip(u, -4.97, 4.97)
    u2 = u * u
    num = u * (135135.0 + u2 * (17325.0 + u2 * (378.0 + u2)))
    den = 135135.0 + u2 * (62370.0 + u2 * (3150.0 + u2 * 28.0))
    return mx.clip(num / den, -1.0, 1.0)


@mx.compile
def _geglu_fwd(gate: mx.array, x: mx.array) -> mx.array:
    t = _tanh(_C * (gate + 0.044715 * gate * gate * gate))
    return 0.5 * gate * (1.0 + t) * x


@mx.compile
def _geglu_bwd(gate: mx.array, x: mx.array, ct: mx.array) -> tuple[mx.array, mx.array]:
    t = _tanh(_C * (gate + 0.044715 * gate * gate * gate))
    act = 0.5 * gate * (1.0 + t)
    dact = 0.5 * (1.0 + t) + 0.5 * gate * (1.0 - t * t) * _C * (1.0 + 3 * 0.044715 * gate * gate)
    return ct * x * dact, ct * act


@mx.custom_function
def fast_geglu(gate: mx.array, x: mx.array) -> mx.array:
    """gelu_approx(gate) * x with a cheap tanh; the explicit VJP avoids autodiff's many temporaries."""
    return _geglu_fwd(gate, x)


@fast_geglu.vjp
def _fast_geglu_vjp(primals, cotangent, output):
    gate, x = primals
    return _geglu_bwd(gate, x, cotangent)


@contextlib.contextmanager
def fast_kernels() -> Iterator[None]:
    """Within the block, mlx-lm's Gemma 4 MLPs and experts use `fast_geglu` (training only)."""
    from mlx_lm.models import gemma4_text

    original = gemma4_text.geglu
    gemma4_text.geglu = fast_geglu
    try:
        yield
    finally:
        gemma4_text.geglu = original


# -- data --------------------------------------------------------------------------------------------
Pool = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def make_pool(directory: Path, sizes: dict[str, int]) -> None:
    """Write pool_{difficulty}_{seed}.jsonl files with the graded generator (hard ones are slow)."""
    from .puzzles import generate_puzzle

    directory.mkdir(parents=True, exist_ok=True)
    for difficulty, count in sizes.items():
        seed = POOL_SEEDS[difficulty]
        rng = random.Random(seed)
        with open(directory / f"pool_{difficulty}_{seed}.jsonl", "w") as f:
            for _ in range(count):
                p = generate_puzzle(rng, difficulty)
                f.write(json.dumps({"p": list(p.puzzle), "s": list(p.solution)}) + "\n")
        print(f"pool: {count} {difficulty} puzzles (seed {seed})", flush=True)


def load_pool(pool_dir: Path) -> Pool:
    pool: Pool = {d: [] for d in DIFFICULTIES}
    for path in sorted(pool_dir.glob("pool_*.jsonl")):
        difficulty = path.name.split("_")[1]
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                puzzle, solution = (np.array(row[k], dtype=np.int64) for k in ("p", "s"))
                pool[difficulty].append((puzzle, solution))
    return {d: v for d, v in pool.items() if v}


def make_batch(rng: np.random.Generator, pool: Pool, batch: int, mix: dict[str, float]):
    """Prompts [B,84], noisy canvases [B,81], targets [B,81], loss mask [B,81] (non-given cells)."""
    names = [d for d in mix if d in pool]
    weights = np.array([mix[d] for d in names], dtype=np.float64)
    picks = rng.choice(len(names), size=batch, p=weights / weights.sum())
    prompts, canvases, targets, masks = [], [], [], []
    for k in picks:
        rows = pool[names[k]]
        puzzle, solution = rows[rng.integers(len(rows))]
        symmetry = Symmetry.random(rng)
        puzzle, solution = symmetry.apply(puzzle), symmetry.apply(solution)
        target = np.array(T.encode_solution(solution))
        blank = puzzle == 0
        corrupt = blank & (rng.random(81) < rng.random())
        noise = rng.integers(0, T.VOCAB_SIZE, 81)
        prompts.append(T.encode_prompt(puzzle))
        canvases.append(np.where(corrupt, noise, target))
        targets.append(target)
        masks.append(blank)
    as_mx = [mx.array(np.array(a, dtype=np.int32)) for a in (prompts, canvases, targets)]
    return (*as_mx, mx.array(np.array(masks, dtype=np.float32)))


# -- training ----------------------------------------------------------------------------------------
def sampler_canvas(z, canvases, blank, gumbel, noise, fraction):
    """The canvas the sampler hands the next pass, after a pass whose tempered logits were `z`.

    Why: in training every uncorrupted cell is right, while at inference the canvas holds the previous
    pass's own samples wherever it was most certain, and those can be wrong yet plausible. A model that
    never saw such a canvas believes it: run 6 fails medium puzzles on full, confident grids a few cells
    off (TRAINING.md). As in the sampler, a blank cell keeps its sample if it is in the lowest-entropy
    prefix and gets fresh uniform noise otherwise (givens stay); the sampler's prefix length follows its
    entropy bound and how sure the pass is, here it is a random `fraction` of a row's blanks, so every
    size is trained.
    """
    logp = log_probs(z)
    ent = mx.where(blank, entropy(logp), mx.inf)
    rank = mx.argsort(mx.argsort(ent, axis=-1), axis=-1)
    accepted = blank & (rank < mx.floor(fraction * blank.sum(axis=-1))[:, None])
    return mx.where(accepted, gumbel_sample(logp, gumbel), mx.where(blank, noise, canvases))


def loss_fn(model: Model, prompts, canvases, targets, mask, sc_temp, rollout=None, *, sc_passes: int):
    """Cross-entropy of the pass that follows `sc_passes` earlier passes over the same canvas.

    Each earlier pass is self-conditioned on the one before it (the first on nothing), with no
    gradient through any of them, and feeds its logits / T forward as the sampler does. One earlier
    pass is the usual self-conditioning recipe; a chain of several trains the pass the sampler runs
    most often, one whose self-conditioning input came from an already self-conditioned pass.
    With `rollout` (Gumbel noise [P,B,L,V], canvas noise [P,B,L], accepted fractions [P,B], one row
    per earlier pass) each earlier pass also rewrites the canvas as the sampler would
    (`sampler_canvas`), so the graded pass sees the model's own samples, mistakes included.
    """
    cache = model.make_cache(prompts.shape[0])
    model.encode(prompts, cache)
    sc = None
    blank = mask > 0
    for i in range(sc_passes):
        previous = mx.stop_gradient(model.decode(canvases, cache, sc))
        z = previous / sc_temp[:, None, None]
        if rollout is not None:
            gumbel, noise, fraction = (a[i] for a in rollout)
            canvases = sampler_canvas(z, canvases, blank, gumbel, noise, fraction)
        sc = z.astype(model.dtype)
    logits = model.decode(canvases, cache, sc)
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")
    return (ce * mask).sum() / mask.sum()


def draw_rollout(rng: np.random.Generator, passes: int, batch: int) -> tuple[mx.array, mx.array, mx.array]:
    """The random inputs of `sampler_canvas` for `passes` earlier passes (see `loss_fn`)."""
    shape = (passes, batch, T.CANVAS_LENGTH)
    uniform = rng.random((*shape, T.VOCAB_SIZE), dtype=np.float32)
    gumbel = -np.log(-np.log(np.clip(uniform, 1e-7, 1 - 1e-7)))
    noise = rng.integers(0, T.VOCAB_SIZE, shape).astype(np.int32)
    return mx.array(gumbel), mx.array(noise), mx.array(rng.random(shape[:2]).astype(np.float32))


def evaluate(model: Model, seed: int, count: int) -> dict[str, tuple[float, float]]:
    """Solve rate and mean passes per difficulty with the real sampler and pinned givens.

    The model is evaluated with the generation config that ships with it (GENERATION_CONFIG), so the
    learning curve measures what `dgemma sudoku` would do.
    """
    from .puzzles import generate_batch
    from .solver_model import solve_grids, solve_rate_and_passes

    config = GenerationConfig.from_dict(GENERATION_CONFIG)
    out = {}
    for difficulty in ("easy", "medium"):
        puzzles = [p.puzzle for p in generate_batch(seed, difficulty, count)]
        results = solve_grids(model, puzzles, seed, config=config)
        out[difficulty] = solve_rate_and_passes(results)
    return out


def save_checkpoint(model: Model, config: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    T.write_tokenizer(out)


def positive_int(text: str) -> int:
    """argparse type for sizes: 0 or a negative size is a usage error, not a silent default."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train the bundled Sudoku DiffusionGemma.")
    p.add_argument("--make-pool", type=Path, help="only write a puzzle pool to this directory")
    p.add_argument("--pool-sizes", type=int, nargs=3, default=[3000, 1200, 1500], metavar=("E", "M", "H"))
    p.add_argument("--pool", type=Path, help="directory of pool_*.jsonl puzzles")
    p.add_argument("--out", type=Path)
    p.add_argument("--init", type=Path, help="warm start from this checkpoint (its own geometry)")
    p.add_argument("--grow-layers", type=positive_int, help="deepen --init by N identity layers")
    p.add_argument("--layers", type=positive_int, help="new models only (default: the shipped 4)")
    p.add_argument("--hidden", type=positive_int, help="new models only (default: the shipped 128)")
    p.add_argument("--experts", type=positive_int, help="new models only (default: the shipped 4)")
    p.add_argument("--heads", type=positive_int, help="new models only, even (default: the shipped 4)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=150)
    p.add_argument("--mix", type=float, nargs=3, default=[0.5, 0.3, 0.2], metavar=("E", "M", "H"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-count", type=int, default=30)
    p.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    p.add_argument(
        "--sc-chain", type=positive_int, default=1, metavar="N",
        help="self-conditioned batches chain 1..N earlier passes (default 1: the usual recipe)",
    )
    p.add_argument(
        "--sc-temp", type=float, nargs=2, metavar=("LO", "HI"),
        default=[GENERATION_CONFIG["t_min"], GENERATION_CONFIG["t_max"]],
        help="self-conditioning temperature range (default: the shipped sampler schedule's)",
    )
    p.add_argument(
        "--rollout", action="store_true",
        help="earlier passes also rewrite the canvas as the sampler does (their samples where surest)",
    )
    p.add_argument("--max-minutes", type=float, default=1e9, help="stop (and save) after this long")
    args = p.parse_args(argv)

    if args.make_pool:
        make_pool(args.make_pool, dict(zip(DIFFICULTIES, args.pool_sizes, strict=True)))
        return
    if not (args.pool and args.out):
        p.error("--pool and --out are required for training")
    sizes = {"layers": args.layers, "hidden": args.hidden, "experts": args.experts, "heads": args.heads}
    if args.init and any(v is not None for v in sizes.values()):
        p.error(
            "--layers/--hidden/--experts/--heads size a new model;"
            " --init keeps its checkpoint's geometry"
        )
    try:
        new_config = None if args.init else model_config(**sizes)
    except ValueError as e:
        p.error(f"--heads: {e}")
    if args.grow_layers and not args.init:
        p.error("--grow-layers deepens the --init checkpoint; give --init")
    if not 0 < args.sc_temp[0] <= args.sc_temp[1]:
        p.error("--sc-temp LO HI needs 0 < LO <= HI")

    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pool = load_pool(args.pool)
    mix = dict(zip(DIFFICULTIES, args.mix, strict=True))
    if args.grow_layers:
        try:
            model, config = grow(args.init, args.grow_layers)
        except ValueError as e:
            p.error(f"--grow-layers: {e}")
    else:
        config = json.loads((args.init / "config.json").read_text()) if args.init else new_config
        model = Model(ModelConfig.from_dict(config))
        if args.init:
            model.load_weights(str(args.init / "model.safetensors"))
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    pool_sizes = ", ".join(f"{len(v)} {d}" for d, v in pool.items())
    used = {k: v for k, v in vars(args).items() if k not in ("make_pool", "pool_sizes")}  # pool-making only
    print(f"pool {pool_sizes}; model {n_params / 1e6:.2f}M params; args {used}", flush=True)
    save_checkpoint(model, config, args.out)

    def schedule(step):
        warm = mx.minimum(1.0, (step + 1) / args.warmup)
        cos = 0.5 * (1 + mx.cos(math.pi * mx.minimum(step / args.steps, 1.0)))
        return args.lr * warm * (0.05 + 0.95 * cos)

    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.01)
    state = [model.state, optimizer.state]

    def make_step(sc_passes: int):
        def step(*arrays):
            grad_fn = nn.value_and_grad(model, partial(loss_fn, sc_passes=sc_passes))
            loss, grads = grad_fn(model, *arrays)
            grads, _ = optim.clip_grad_norm(grads, 1.0)
            optimizer.update(model, grads)
            return loss

        return step

    # Compiled (the model and optimizer state as implicit inputs/outputs): 5.4 s/step against 6.6 for
    # a 6-layer model on one CPU thread, as the many small element-wise ops fuse.
    steps = {k: mx.compile(make_step(k), inputs=state, outputs=state) for k in range(args.sc_chain + 1)}
    curve = args.out / "curve.jsonl"
    start = time.perf_counter()
    running = None
    for it in range(1, args.steps + 1):
        batch = make_batch(rng, pool, args.batch, mix)
        sc_temp = mx.array(rng.uniform(*args.sc_temp, args.batch).astype(np.float32))
        sc_passes = 0
        if rng.random() < 0.5:  # (one draw for the usual recipe, so older runs' data streams repeat)
            sc_passes = 1 if args.sc_chain == 1 else int(rng.integers(1, args.sc_chain + 1))
        rollout = (draw_rollout(rng, sc_passes, args.batch),) if args.rollout and sc_passes else ()
        with fast_kernels():
            loss = steps[sc_passes](*batch, sc_temp, *rollout)
            mx.eval(state, loss)
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        elapsed = (time.perf_counter() - start) / 60
        if it % 50 == 0:
            lr = float(schedule(mx.array(it)))
            print(f"step {it} loss {running:.4f} lr {lr:.2e} {elapsed:.1f} min", flush=True)
        stop = elapsed > args.max_minutes or it == args.steps
        if it % args.eval_every == 0 or stop:
            save_checkpoint(model, config, args.out)
            scores = evaluate(model, args.eval_seed, args.eval_count)
            text = ", ".join(f"{d} {r:.0%} ({n:.1f} passes)" for d, (r, n) in scores.items())
            print(f"eval step {it}: {text}", flush=True)
            row = {"step": it, "loss": round(running, 4), "minutes": round(elapsed, 1)}
            row |= {f"{d}_solved": r for d, (r, _) in scores.items()}
            row |= {f"{d}_passes": n for d, (_, n) in scores.items()}
            with open(curve, "a") as f:
                f.write(json.dumps(row) + "\n")
        if stop:
            break


if __name__ == "__main__":
    main()
