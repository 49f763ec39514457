"""Sudoku puzzles: parsing, an exact solver/validator, and a generator graded by difficulty.

A grid is 81 ints in row-major order, 0 for a blank. Everything random goes through a
`random.Random` the caller owns, so a seed always gives the same puzzles (training pools and
benchmarks depend on that).

Difficulty is graded two ways at once, because the number of givens alone says little about how hard
a puzzle is for a person (or for a model that has to learn the deductions):

| difficulty | givens | techniques a human needs |
|---|---|---|
| easy | 36-45 | naked and hidden singles only |
| medium | 30-35 | also locked candidates (pointing/claiming) or naked/hidden pairs, no guessing |
| hard | 24-29 | more than the medium set: the logical solver gets stuck and has to guess |
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter

from ..errors import DGemmaError

DIFFICULTIES = ("easy", "medium", "hard")
GIVENS = {"easy": (36, 45), "medium": (30, 35), "hard": (24, 29)}

# Techniques of the logical solver, simplest first; "guessing" means none of them made progress.
NAKED_SINGLE = "naked single"
HIDDEN_SINGLE = "hidden single"
POINTING = "pointing"
CLAIMING = "claiming"
NAKED_PAIR = "naked pair"
HIDDEN_PAIR = "hidden pair"
GUESSING = "guessing"
SINGLES = frozenset({NAKED_SINGLE, HIDDEN_SINGLE})
MEDIUM_TECHNIQUES = frozenset({POINTING, CLAIMING, NAKED_PAIR, HIDDEN_PAIR})

ROWS = [[r * 9 + c for c in range(9)] for r in range(9)]
COLS = [[r * 9 + c for r in range(9)] for c in range(9)]
BOXES = [
    [(br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3)] for br in range(3) for bc in range(3)
]
UNITS = ROWS + COLS + BOXES
PEERS = [tuple(sorted({p for u in UNITS if i in u for p in u} - {i})) for i in range(81)]
ALL = 0x3FE  # bits 1..9: bit d set = digit d still possible

_BOX_OF = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
# Line k (rows 0-8, columns 9-17) meets three boxes; segment j is the three cells it shares with box j
# along the line, _REST_LINE the line's other six cells, _REST_BOX the box's other six cells.
_LINES = ROWS + COLS
_SEGMENTS = [[tuple(line[3 * j : 3 * j + 3]) for j in range(3)] for line in _LINES]
_REST_LINE = [
    [tuple(i for i in line if i not in line[3 * j : 3 * j + 3]) for j in range(3)] for line in _LINES
]
_REST_BOX = [
    [tuple(i for i in BOXES[_BOX_OF[line[3 * j]]] if i not in line) for j in range(3)] for line in _LINES
]
_UNIT_GETTERS = tuple((itemgetter(*u), tuple(u)) for u in UNITS)
_POP = [bin(m).count("1") for m in range(1 << 10)]
_DIGIT = {1 << d: d for d in range(1, 10)}
_BITS = [tuple(1 << d for d in range(1, 10) if m & (1 << d)) for m in range(1 << 10)]
_MAX_ATTEMPTS = 200

Grid = Sequence[int]


class PuzzleError(DGemmaError, ValueError):
    """A puzzle the user typed is malformed; the message names the problem in one line."""


@dataclass(frozen=True)
class Puzzle:
    """A generated puzzle with its unique solution and the grade it was generated for."""

    puzzle: tuple[int, ...]
    solution: tuple[int, ...]
    difficulty: str
    givens: int
    techniques: tuple[str, ...] = field(default=())


# --- parsing -----------------------------------------------------------------------------------------


def parse_puzzle(text: str) -> list[int]:
    """Read a puzzle a person typed or pasted, so that every mistake becomes a one-line message.

    Digits 1-9 are givens, `0` or `.` blanks; whitespace and the `| - +` of drawn grids are ignored.
    """
    cells = [ch for ch in text if ch not in " \t\r\n|-+"]
    for n, ch in enumerate(cells):
        if ch not in ".0123456789":
            raise PuzzleError(f"bad character {ch!r} at cell {n + 1} (use digits 1-9, and 0 or . for blanks)")
    if len(cells) != 81:
        raise PuzzleError(f"puzzle has {len(cells)} cells, expected 81")
    grid = [0 if ch in ".0" else int(ch) for ch in cells]
    for kind, units in (("row", ROWS), ("column", COLS), ("box", BOXES)):
        for n, unit in enumerate(units):
            seen = [grid[i] for i in unit if grid[i]]
            dup = next((d for d in seen if seen.count(d) > 1), None)
            if dup:
                raise PuzzleError(f"contradictory givens: digit {dup} appears twice in {kind} {n + 1}")
    return grid


def format_puzzle(grid: Grid) -> str:
    """The 81-character form parse_puzzle reads back, `.` for blanks (one line for logs and JSON)."""
    return "".join(str(v) if v else "." for v in grid)


# --- exact solver ------------------------------------------------------------------------------------


def _cells(grid: Grid) -> list[int]:
    """The grid as a list of Python ints, or a PuzzleError (numpy rows and tuples welcome)."""
    if len(grid) != 81 or any(v not in range(10) for v in grid):
        raise PuzzleError(f"a grid is 81 values 0-9, got {len(grid)} values")
    return [int(v) for v in grid]


def _propagate(cand: list[int], queue: list[int]) -> int:
    """Naked and hidden singles to a fixed point: 0 on a contradiction, else the hidden-single sweeps.

    This is what keeps the backtracking search tiny: most puzzles need no branching at all, and the
    hardest known ones only a few dozen nodes. The sweep count doubles as a cheap hardness score for
    puzzles that singles solve (more sweeps = a longer chain of deductions).
    """
    pop, peers = _POP, PEERS
    sweeps = 0
    while True:
        while queue:
            i = queue.pop()
            bit = cand[i]
            for p in peers[i]:
                m = cand[p]
                if m & bit:
                    m ^= bit
                    if not m:
                        return 0
                    cand[p] = m
                    if pop[m] == 1:
                        queue.append(p)
        sweeps += 1
        for get, unit in _UNIT_GETTERS:
            once = twice = 0
            for m in get(cand):
                twice |= once & m
                once |= m
            if once != ALL:
                return 0  # some digit has no place left in this unit
            hidden = once & ~twice
            if hidden:
                for i in unit:
                    m = cand[i]
                    x = m & hidden
                    if x and x != m:
                        if pop[x] > 1:
                            return 0  # two digits that can only go here
                        cand[i] = x
                        queue.append(i)
        if not queue:
            return sweeps


def _initial(grid: Grid) -> list[int] | None:
    cand = [1 << v if v else ALL for v in grid]
    return cand if _propagate(cand, [i for i, v in enumerate(grid) if v]) else None


def _singles_sweeps(grid: Grid) -> int:
    """Hidden-single sweeps singles need to fill the grid, 0 if they cannot (filled = provably unique)."""
    cand = [1 << v if v else ALL for v in grid]
    sweeps = _propagate(cand, [i for i, v in enumerate(grid) if v])
    return sweeps if sweeps and all(_POP[m] == 1 for m in cand) else 0


def _forced(grid: Grid, cell: int) -> bool:
    """Whether the other givens force `cell` as a naked single.

    Blanking such a cell changes nothing a solver can deduce (its first step puts it back), so the
    solution stays unique and the grade stays the same without running either solver.
    """
    seen = 1 << grid[cell]
    for p in PEERS[cell]:
        seen |= 1 << grid[p]
    return seen & ALL == ALL


def _search(cand: list[int], limit: int, out: list[list[int]], rng: random.Random | None) -> bool:
    """Depth-first search on the fewest alternatives; True once `limit` solutions are found.

    The alternatives are either the candidates of one cell or the places of one digit in one unit,
    whichever are fewer: branching on cells only left some sparse grids at 300k nodes (17 s), the
    mixed choice keeps the worst case seen at a few dozen nodes.
    """
    best, best_n = -1, 10
    for i in range(81):
        n = _POP[cand[i]]
        if 1 < n < best_n:
            best, best_n = i, n
            if n == 2:
                break
    if best < 0:
        out.append([_DIGIT[m] for m in cand])
        return len(out) >= limit
    moves = [(best, bit) for bit in _BITS[cand[best]]]
    if best_n > 2:
        for unit in UNITS:
            for bit in _BITS[ALL]:
                cells = [i for i in unit if cand[i] & bit and cand[i] != bit]
                if 1 < len(cells) < len(moves):
                    moves = [(i, bit) for i in cells]
    if rng is not None:
        rng.shuffle(moves)
    for cell, bit in moves:
        child = cand[:]
        child[cell] = bit
        if _propagate(child, [cell]) and _search(child, limit, out, rng):
            return True
    return False


def solve(grid: Grid, limit: int = 2, rng: random.Random | None = None) -> list[list[int]]:
    """Up to `limit` solutions, so uniqueness costs one search that stops at the second solution.

    With `rng` the digits are tried in random order, which is how random full grids are made.
    """
    cand = _initial(_cells(grid))
    out: list[list[int]] = []
    if cand is not None and limit > 0:
        _search(cand, limit, out, rng)
    return out


def has_unique_solution(grid: Grid) -> bool:
    """A proper Sudoku has exactly one solution; the training target must not be ambiguous."""
    return len(solve(grid, limit=2)) == 1


def _has_other_solution(grid: Grid, cell: int, digit: int) -> bool:
    """Whether blank `cell` can hold something other than `digit` (the known solution's value).

    When the grid with `cell` filled has a unique solution, any second solution must differ there, so
    this decides uniqueness with a single search that usually dies in propagation.
    """
    cand = [1 << v if v else ALL for v in grid]
    cand[cell] = ALL & ~(1 << digit)
    if not _propagate(cand, [i for i, v in enumerate(grid) if v]):
        return False
    return _search(cand, 1, [], None)


def is_valid_solution(solution: Grid, puzzle: Grid | None = None) -> bool:
    """Whether a (model's) answer is a complete, correct grid that keeps the puzzle's givens."""
    if len(solution) != 81 or any(v not in range(1, 10) for v in solution):
        return False
    if any(sorted(solution[i] for i in unit) != list(range(1, 10)) for unit in UNITS):
        return False
    if puzzle is None:
        return True
    return len(puzzle) == 81 and all(p == 0 or p == s for p, s in zip(puzzle, solution, strict=True))


# --- logical (human-style) solver --------------------------------------------------------------------


class _Logic:
    """Candidates of a partly solved grid and the deductions a person would make on them."""

    def __init__(self, grid: list[int]) -> None:
        self.grid = list(grid)
        self.cand = [0 if v else ALL for v in grid]
        self.broken = False  # a contradiction: the grid has no solution the logic could reach
        for i, v in enumerate(grid):
            if v:
                for p in PEERS[i]:
                    self.cand[p] &= ~(1 << v)
                    self.broken |= grid[p] == v
        self.broken |= any(not self.grid[i] and not self.cand[i] for i in range(81))

    def place(self, i: int, d: int) -> None:
        self.grid[i] = d
        self.cand[i] = 0
        bit = 1 << d
        for p in PEERS[i]:
            m = self.cand[p]
            if m & bit:
                m ^= bit
                self.cand[p] = m
                if not m and not self.grid[p]:
                    self.broken = True

    def eliminate(self, cells, mask: int) -> bool:
        changed = False
        for i in cells:
            m = self.cand[i]
            if m & mask:
                m &= ~mask
                self.cand[i] = m
                changed = True
                if not m:
                    self.broken = True
        return changed

    def naked_singles(self) -> bool:
        progress = False
        for i in range(81):
            m = self.cand[i]
            if not self.grid[i] and _POP[m] == 1:
                self.place(i, _DIGIT[m])
                progress = True
        return progress

    def hidden_singles(self) -> bool:
        progress = False
        for unit in UNITS:
            once = twice = 0
            for i in unit:
                m = self.cand[i]
                twice |= once & m
                once |= m
            hidden = once & ~twice
            if hidden:
                for i in unit:
                    h = self.cand[i] & hidden
                    if h and not self.grid[i]:
                        if _POP[h] > 1:
                            self.broken = True
                            return progress
                        self.place(i, _DIGIT[h])
                        progress = True
        return progress

    def _segments(self) -> list[list[int]]:
        """Candidates of each line's three box segments: seg[line][j], lines = 9 rows then 9 columns."""
        cand = self.cand
        return [[cand[a] | cand[b] | cand[c] for a, b, c in segs] for segs in _SEGMENTS]

    def pointing(self) -> bool:
        """A digit confined to one row (column) of a box is gone from the rest of that row (column)."""
        seg = self._segments()
        progress = False
        for k in range(18):
            band = k - k % 3
            for j in range(3):
                others = seg[band + (k + 1) % 3][j] | seg[band + (k + 2) % 3][j]
                only = seg[k][j] & ~others
                if only:
                    progress |= self.eliminate(_REST_LINE[k][j], only)
        return progress

    def claiming(self) -> bool:
        """A digit confined to one box within a row (column) is gone from the rest of that box."""
        seg = self._segments()
        progress = False
        for k in range(18):
            s0, s1, s2 = seg[k]
            for j, only in enumerate((s0 & ~(s1 | s2), s1 & ~(s0 | s2), s2 & ~(s0 | s1))):
                if only:
                    progress |= self.eliminate(_REST_BOX[k][j], only)
        return progress

    def naked_pairs(self) -> bool:
        progress = False
        for unit in UNITS:
            pairs = [i for i in unit if _POP[self.cand[i]] == 2]
            for a in range(len(pairs)):
                for b in range(a + 1, len(pairs)):
                    m = self.cand[pairs[a]]
                    if self.cand[pairs[b]] == m:
                        rest = [i for i in unit if i not in (pairs[a], pairs[b])]
                        progress |= self.eliminate(rest, m)
        return progress

    def hidden_pairs(self) -> bool:
        progress = False
        for unit in UNITS:
            where = {bit: tuple(i for i in unit if self.cand[i] & bit) for bit in _BITS[ALL]}
            twos = [bit for bit, cells in where.items() if len(cells) == 2]
            for a in range(len(twos)):
                for b in range(a + 1, len(twos)):
                    if where[twos[a]] == where[twos[b]]:
                        keep = twos[a] | twos[b]
                        for i in where[twos[a]]:
                            if self.cand[i] & ~keep:
                                self.cand[i] &= keep
                                progress = True
        return progress


_STEPS = (
    (NAKED_SINGLE, _Logic.naked_singles),
    (HIDDEN_SINGLE, _Logic.hidden_singles),
    (POINTING, _Logic.pointing),
    (CLAIMING, _Logic.claiming),
    (NAKED_PAIR, _Logic.naked_pairs),
    (HIDDEN_PAIR, _Logic.hidden_pairs),
)
_ORDER = [name for name, _ in _STEPS] + [GUESSING]


def techniques_needed(grid: Grid, allowed: frozenset[str] | None = None) -> tuple[str, ...]:
    """The techniques a person needs, simplest first, always trying the simplest one that helps.

    Ends with "guessing" when the allowed techniques (default: all of the logical solver's) get stuck
    before the grid is full, so the grade reflects the hardest step rather than the number of givens.
    """
    logic = _Logic(_cells(grid))
    used: set[str] = set()
    steps = [(n, s) for n, s in _STEPS if allowed is None or n in allowed]
    while not logic.broken and 0 in logic.grid:
        for name, step in steps:
            if step(logic):
                used.add(name)
                break
        else:
            break
    if logic.broken or 0 in logic.grid:
        used.add(GUESSING)
    return tuple(n for n in _ORDER if n in used)


def singles_only(grid: Grid) -> bool:
    """True if naked and hidden singles alone solve the puzzle (the 'easy' technique set)."""
    return GUESSING not in techniques_needed(grid, SINGLES)


def grade(grid: Grid, techniques: tuple[str, ...] | None = None) -> str:
    """The difficulty whose technique set the puzzle needs (givens are not considered here)."""
    used = set(techniques_needed(grid) if techniques is None else techniques)
    if GUESSING in used:
        return "hard"
    return "medium" if used & MEDIUM_TECHNIQUES else "easy"


# --- generator ---------------------------------------------------------------------------------------


def _rng(rng: random.Random | int) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def random_solution(rng: random.Random | int) -> list[int]:
    """A random full grid: the start of every generated puzzle.

    The three diagonal boxes share no row or column, so they are filled with independent random
    permutations; randomised backtracking completes the rest (about 1 ms instead of 7 ms from empty).
    """
    rng = _rng(rng)
    while True:
        grid = [0] * 81
        for box in (BOXES[0], BOXES[4], BOXES[8]):
            for i, d in zip(box, rng.sample(range(1, 10), 9), strict=True):
                grid[i] = d
        found = solve(grid, limit=1, rng=rng)
        if found:  # always, as far as known; the loop only guards the claim
            return found[0]


def _blank_to(grid: list[int], solution: Grid, order: list[int], givens: int, goal: int) -> int:
    """Blank cells in `order` while the solution stays unique, down to `goal` givens; the count left."""
    for i in order:
        if givens <= goal:
            break
        if grid[i]:
            forced = _forced(grid, i)
            grid[i] = 0
            if forced or not _has_other_solution(grid, i, solution[i]):
                givens -= 1
            else:
                grid[i] = solution[i]
    return givens


def _climb_step(
    grid: list[int], solution: Grid, order: list[int], level: int, want: int
) -> tuple[int, int] | None:
    """(cell, new level) of the next blank on the way from grade `level` up to grade `want`.

    Tries every given: the first blank that reaches the grade wins. Otherwise the blank that leaves
    the hardest puzzle still below the grade, judged by level and then by how many hidden-single sweeps
    singles need: random blanks at 30-35 givens need pairs or locked candidates about 1 time in 100,
    and climbing along the longest chain of deductions finds one about twice as often as a random
    climb. Logic that fills the grid proves uniqueness, so the exact solver only sees the few grids
    the logic gets stuck on.
    """
    best, best_score = None, (-1, -1)
    for i in order:
        if not grid[i]:
            continue
        if _forced(grid, i):
            new, score = level, (level, 0)
        else:
            grid[i] = 0
            sweeps = _singles_sweeps(grid)
            if sweeps:
                new, score = 0, (0, sweeps)
            elif _has_other_solution(grid, i, solution[i]):
                new, score = -1, (-1, 0)
            else:
                new = DIFFICULTIES.index(grade(grid))
                score = (new, 0)
                if new == 2 and want < 2:
                    new = -1  # stuck: too hard or not unique, either way not wanted
            grid[i] = solution[i]
        if new == want:
            return i, new
        if 0 <= new < want and score > best_score:
            best, best_score = (i, new), score
    return best


def _keeps_grade(grid: list[int], solution: Grid, cell: int, want: int) -> bool:
    """Blank `cell` if the puzzle stays unique and at grade `want`; whether it did.

    Blanking never makes a puzzle easier (every deduction still holds with fewer givens), so only the
    upper side needs checking: easy must stay singles-only, medium must not need guessing, hard must
    stay unique.
    """
    if _forced(grid, cell):
        grid[cell] = 0
        return True
    grid[cell] = 0
    if want == 0:
        ok = _singles_sweeps(grid) > 0
    else:  # the exact check first: it is cheaper than grading a grid the logic gets stuck on
        ok = not _has_other_solution(grid, cell, solution[cell])
        if ok and want == 1:
            ok = GUESSING not in techniques_needed(grid)
    if not ok:
        grid[cell] = solution[cell]
    return ok


def generate_puzzle(rng: random.Random | int, difficulty: str = "easy") -> Puzzle:
    """A puzzle with a unique solution whose givens and techniques both match `difficulty`.

    Cells of a random full grid are blanked in random order as long as the solution stays unique,
    down to the top of the difficulty's givens range. From there the search climbs one given at a time
    (see `_climb_step`) until the grade is reached, no lower than the bottom of the range. Then more
    cells are blanked while the grade holds, down to a random target in the range, so the givens spread
    over the whole range. An attempt that ends outside the grade starts over with a new grid;
    everything draws from `rng` alone, so a seed always gives the same puzzle.
    """
    if difficulty not in DIFFICULTIES:
        raise PuzzleError(f"unknown difficulty {difficulty!r} (choose from {', '.join(DIFFICULTIES)})")
    rng = _rng(rng)
    lo, hi = GIVENS[difficulty]
    want = DIFFICULTIES.index(difficulty)
    for _ in range(_MAX_ATTEMPTS):
        solution = random_solution(rng)
        order = list(range(81))
        rng.shuffle(order)
        target = rng.randint(lo, hi)
        grid = list(solution)
        givens = _blank_to(grid, solution, order, 81, hi)
        if givens > hi:
            continue  # the random order hit a minimal puzzle above the range
        level = DIFFICULTIES.index(grade(grid))
        while level < want and givens > lo:
            step = _climb_step(grid, solution, order, level, want)
            if step is None:
                break
            grid[step[0]] = 0
            givens -= 1
            level = step[1]
        if level != want:
            continue
        for i in order:
            if givens <= target:
                break
            if grid[i] and _keeps_grade(grid, solution, i, want):
                givens -= 1
        return Puzzle(tuple(grid), tuple(solution), difficulty, givens, techniques_needed(grid))
    raise RuntimeError(f"could not generate a {difficulty} puzzle in {_MAX_ATTEMPTS} attempts")


def generate_batch(seed: int, difficulty: str, count: int) -> list[Puzzle]:
    """`count` puzzles from one seed: the reproducible sets that training and benchmarks use."""
    rng = random.Random(seed)
    return [generate_puzzle(rng, difficulty) for _ in range(count)]
