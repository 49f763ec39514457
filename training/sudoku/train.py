"""Train the bundled Sudoku DiffusionGemma with the model's own recipe (`recipe.py`).

Recipe: the puzzle is the prompt, the 81 solved cells are the canvas; each non-given canvas cell is
replaced, with probability t ~ U(0, 1) per row, by a token drawn uniformly from the whole vocabulary
(the sampler's own noise); givens stay in place because inference pins them, so training never spends
capacity on cells the sampler never asks about. Half of the batches take a second, self-conditioned
pass (`--sc-temp` sets its temperature range). `--sc-chain N` lets that earlier pass be the last of a
chain of 1..N passes, each self-conditioned on the one before: the sampler's passes after its second
are all of that kind, and a single earlier pass never shows the model a self-conditioning input that
came from a self-conditioned pass. `--rollout` lets each earlier pass also rewrite the canvas as the
sampler does (its own samples on the cells it was surest of, fresh noise elsewhere), so the graded pass
learns to correct the model's own mistakes. Data: `pool.py`; the fast GELU used only here: `kernels.py`.

Creating the pool (each line {"p": puzzle, "s": solution}) and training, from the repository root:

    python -m training.sudoku.train --make-pool POOL_DIR --pool-sizes 3000 1200 1500
    python -m training.sudoku.train --pool POOL_DIR --out OUT --steps 3000 --batch 64 --seed 0

`--init DIR` warm-starts from a checkpoint (keeping its geometry and RoPE; `--grow-layers N` deepens it
by N layers that start as the identity); `--layers/--hidden/--experts/--heads` size a new model (the
defaults are the shipped geometry, grid RoPE included). The shipped weights' exact commands are in
training/sudoku/TRAINING.md. Every `--eval-every` steps the checkpoint is saved and evaluated on
held-out puzzles (`dgemma_mlx.sudoku.evaluation`) with the sampler settings that ship with the model,
so the learning curve measures what `dgemma sudoku` would do.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from dgemma_mlx.config import ModelConfig
from dgemma_mlx.generation_config import GenerationConfig
from dgemma_mlx.model import Model
from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.architecture import GENERATION_CONFIG
from dgemma_mlx.sudoku.evaluation import EVAL_SEED, evaluate
from dgemma_mlx.sudoku.puzzles import DIFFICULTIES

from .geometry import grow, model_config
from .kernels import fast_kernels
from .pool import Pool, load_pool, make_batch, make_pool
from .recipe import draw_rollout, loss_fn


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


def parser() -> argparse.ArgumentParser:
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
    return p


def checked_geometry(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict | None:
    """The usage checks of a training run; returns a new model's config (None with --init)."""
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
    return new_config


def build_model(
    p: argparse.ArgumentParser, args: argparse.Namespace, new_config: dict | None
) -> tuple[Model, dict]:
    """The model to train: grown from --init, warm-started from it, or new (random init from the seed)."""
    if args.grow_layers:
        try:
            return grow(args.init, args.grow_layers)
        except ValueError as e:
            p.error(f"--grow-layers: {e}")
    config = json.loads((args.init / "config.json").read_text()) if args.init else new_config
    model = Model(ModelConfig.from_dict(config))
    if args.init:
        model.load_weights(str(args.init / "model.safetensors"))
    return model, config


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.make_pool:
        make_pool(args.make_pool, dict(zip(DIFFICULTIES, args.pool_sizes, strict=True)))
        return
    new_config = checked_geometry(p, args)
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    pool = load_pool(args.pool)
    model, config = build_model(p, args, new_config)
    n_params = sum(v.size for _, v in tree_flatten(model.parameters()))
    pool_sizes = ", ".join(f"{len(v)} {d}" for d, v in pool.items())
    used = {k: v for k, v in vars(args).items() if k not in ("make_pool", "pool_sizes")}  # pool-making only
    print(f"pool {pool_sizes}; model {n_params / 1e6:.2f}M params; args {used}", flush=True)
    save_checkpoint(model, config, args.out)
    train(model, config, pool, rng, args)


def train(model: Model, config: dict, pool: Pool, rng: np.random.Generator, args: argparse.Namespace) -> None:
    """The loop: AdamW on a warmup + cosine schedule, checkpoints and evaluations along the way."""
    mix = dict(zip(DIFFICULTIES, args.mix, strict=True))

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

    # Compiled (the model and optimizer state as implicit inputs/outputs), so the many small element-wise
    # ops fuse (TRAINING.md, "Training speed").
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
            shipped = GenerationConfig.from_dict(GENERATION_CONFIG)
            scores = evaluate(model, args.eval_seed, args.eval_count, ("easy", "medium"), config=shipped)
            text = ", ".join(f"{d} {f.rate:.0%} ({f.passes:.1f} passes)" for d, f in scores.items())
            print(f"eval step {it}: {text}", flush=True)
            row = {"step": it, "loss": round(running, 4), "minutes": round(elapsed, 1)}
            row |= {f"{d}_solved": f.rate for d, f in scores.items()}
            row |= {f"{d}_passes": f.passes for d, f in scores.items()}
            with open(curve, "a") as f:
                f.write(json.dumps(row) + "\n")
        if stop:
            break


if __name__ == "__main__":
    main()
