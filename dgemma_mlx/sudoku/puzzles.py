"""Sudoku puzzles: parsing, an exact solver/validator, and a generator graded by difficulty."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import DGemmaError

DIFFICULTIES = ("easy", "medium", "hard")
GIVENS = {"easy": (36, 45), "medium": (30, 35), "hard": (24, 29)}
ROWS = [[r * 9 + c for c in range(9)] for r in range(9)]
COLS = [[r * 9 + c for r in range(9)] for c in range(9)]
BOXES = [
    [(br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3)] for br in range(3) for bc in range(3)
]
UNITS = ROWS + COLS + BOXES
PEERS = [sorted({p for u in UNITS if i in u for p in u} - {i}) for i in range(81)]
ALL = 0x3FE  # bits 1..9


class PuzzleError(DGemmaError, ValueError):
    """A puzzle the user typed is malformed; the message names the problem in one line."""


@dataclass(frozen=True)
class Puzzle:
    puzzle: tuple[int, ...]
    solution: tuple[int, ...]
    difficulty: str
    givens: int


def parse_puzzle(text: str) -> list[int]:
    cells = [ch for ch in text if ch not in " \t\r\n|-+"]
    if len(cells) != 81:
        raise PuzzleError(f"puzzle has {len(cells)} cells, expected 81")
    grid = []
    for i, ch in enumerate(cells):
        if ch in ".0":
            grid.append(0)
        elif ch in "123456789":
            grid.append(int(ch))
        else:
            raise PuzzleError(f"bad character {ch!r} at cell {i + 1} (use digits 1-9, and 0 or . for blanks)")
    for kind, units in (("row", ROWS), ("column", COLS), ("box", BOXES)):
        for n, unit in enumerate(units):
            seen = [grid[i] for i in unit if grid[i]]
            dup = next((d for d in seen if seen.count(d) > 1), None)
            if dup:
                raise PuzzleError(f"contradictory givens: digit {dup} appears twice in {kind} {n + 1}")
    return grid


def format_puzzle(grid) -> str:
    return "".join(str(v) if v else "." for v in grid)


def _candidates(grid) -> list[int] | None:
    cand = [ALL] * 81
    for i, v in enumerate(grid):
        if v:
            if not cand[i] & (1 << v):
                return None
            cand[i] = 1 << v
            for p in PEERS[i]:
                cand[p] &= ~(1 << v)
    return cand


def solve(grid, limit: int = 2, rng: random.Random | None = None) -> list[list[int]]:
    """Up to `limit` solutions by bitmask MRV backtracking (random value order with `rng`)."""
    grid = list(grid)
    solutions: list[list[int]] = []

    def rec() -> bool:
        best, best_mask, best_n = -1, 0, 10
        for i in range(81):
            if grid[i] == 0:
                mask = ALL
                for p in PEERS[i]:
                    if grid[p]:
                        mask &= ~(1 << grid[p])
                n = bin(mask).count("1")
                if n == 0:
                    return False
                if n < best_n:
                    best, best_mask, best_n = i, mask, n
                    if n == 1:
                        break
        if best < 0:
            solutions.append(list(grid))
            return len(solutions) >= limit
        digits = [d for d in range(1, 10) if best_mask & (1 << d)]
        if rng is not None:
            rng.shuffle(digits)
        for d in digits:
            grid[best] = d
            if rec():
                return True
        grid[best] = 0
        return False

    if _candidates(grid) is not None:
        rec()
    return solutions


def has_unique_solution(grid) -> bool:
    return len(solve(grid, limit=2)) == 1


def is_valid_solution(solution, puzzle=None) -> bool:
    if len(solution) != 81 or any(v not in range(1, 10) for v in solution):
        return False
    if any(sorted(solution[i] for i in unit) != list(range(1, 10)) for unit in UNITS):
        return False
    return puzzle is None or all(p == 0 or p == s for p, s in zip(puzzle, solution, strict=True))


def singles_only(grid) -> bool:
    """True if naked and hidden singles alone solve the puzzle (the 'easy' technique set)."""
    grid = list(grid)
    while 0 in grid:
        cand = _candidates(grid)
        if cand is None:
            return False
        progress = False
        for i in range(81):
            if grid[i] == 0 and bin(cand[i]).count("1") == 1:
                grid[i] = cand[i].bit_length() - 1
                progress = True
        if not progress:
            for unit in UNITS:
                for d in range(1, 10):
                    spots = [i for i in unit if grid[i] == 0 and cand[i] & (1 << d)]
                    if len(spots) == 1 and d not in (grid[i] for i in unit):
                        grid[spots[0]] = d
                        progress = True
                        break
                if progress:
                    break
        if not progress:
            return False
    return True


def generate_puzzle(rng: random.Random | int, difficulty: str = "easy") -> Puzzle:
    if difficulty not in DIFFICULTIES:
        raise PuzzleError(f"unknown difficulty {difficulty!r} (choose from {', '.join(DIFFICULTIES)})")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    lo, hi = GIVENS[difficulty]
    for _ in range(200):
        solution = solve([0] * 81, limit=1, rng=rng)[0]
        target = rng.randint(lo, hi)
        grid = list(solution)
        order = list(range(81))
        rng.shuffle(order)
        for i in order:
            if sum(1 for v in grid if v) <= target:
                break
            keep, grid[i] = grid[i], 0
            if not has_unique_solution(grid):
                grid[i] = keep
        givens = sum(1 for v in grid if v)
        if not lo <= givens <= hi:
            continue
        easy = singles_only(grid)
        if (difficulty == "easy") == easy or difficulty == "hard":
            return Puzzle(tuple(grid), tuple(solution), difficulty, givens)
    raise RuntimeError(f"could not generate a {difficulty} puzzle")


def generate_batch(seed: int, difficulty: str, count: int) -> list[Puzzle]:
    rng = random.Random(seed)
    return [generate_puzzle(rng, difficulty) for _ in range(count)]
