"""Training data: a pool of graded puzzles on disk, and batches drawn from it through random symmetries.

Each pooled puzzle is drawn through a random Sudoku symmetry (digit relabelling, row/column moves
within bands and stacks, band/stack moves, transpose): validity, uniqueness and difficulty are kept
while the pool's few thousand puzzles become billions of distinct training examples. Difficulties are
sampled with `--mix` weights, not pool sizes, so the small hard pool is not over- or under-represented.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlx.core as mx
import numpy as np

from dgemma_mlx.sudoku import tokens as T
from dgemma_mlx.sudoku.puzzles import DIFFICULTIES, generate_puzzle
from dgemma_mlx.sudoku.symmetry import Symmetry

POOL_SEEDS = {"easy": 1001, "medium": 1002, "hard": 1003}  # never an evaluation or benchmark seed
Pool = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def make_pool(directory: Path, sizes: dict[str, int]) -> None:
    """Write pool_{difficulty}_{seed}.jsonl files with the graded generator (hard ones are slow)."""
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
    """Every pool_*.jsonl file under `pool_dir`, as (puzzle, solution) arrays per difficulty."""
    pool: Pool = {d: [] for d in DIFFICULTIES}
    for path in sorted(pool_dir.glob("pool_*.jsonl")):
        difficulty = path.name.split("_")[1]
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                puzzle, solution = (np.array(row[k], dtype=np.int64) for k in ("p", "s"))
                pool[difficulty].append((puzzle, solution))
    return {d: v for d, v in pool.items() if v}


def make_batch(
    rng: np.random.Generator, pool: Pool, batch: int, mix: dict[str, float]
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
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
