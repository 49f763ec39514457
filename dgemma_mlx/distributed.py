"""What every multi-process mode shares: the group, who is rank 0, the start-up handshake, the watchdog.

Several Macs run one job through MLX's own distributed layer (`mx.distributed`, started by
`mlx.launch` with a hostfile, as mlx-lm does): ring over TCP or Thunderbolt, JACCL over RDMA, MPI,
NCCL on CUDA. Nothing here opens a socket; every byte between ranks goes through `mx.distributed`
collectives (a byte string is a uint8 array with a length gathered first).

The pieces, each usable alone (`batch_ranks.py` for data-parallel batch; the pipeline mode too):

- `launched()` (read from the environment, no MLX import) and `init()` -> `Ranks`: the group, this
  rank, the size, and a printable name for every rank (`rank 1 (10.0.0.2:32324)`, from the ring
  hostfile when there is one). Outside a launcher it is a group of one and callers run exactly as a
  single process does.
- `handshake()`: before any heavy work, every rank shows a SHA-256 per named part (the checkpoint's
  `checkpoint_fingerprint`, the settings) and whether its own set-up failed. Ranks started with other
  model files or settings refuse together, each with one line naming the first rank that differs
  from rank 0 and what differs; a rank whose set-up failed prints its own error, the others say so.
- `Watchdog`: MLX collectives block until every rank arrives, and a peer that vanished without closing
  its sockets (a Mac that slept or lost its cable) would keep them blocked for ever. Each collective
  runs under a deadline; a thread that touches no MLX state prints one line naming the peer and ends
  the process (`os._exit`, since the main thread is stuck in C++) with `EXIT_RANK_LOST`.
- A peer that died outright closes its sockets: the ring backend raises at once, and `collective`
  turns that into `RankLost`, one line. `mlx.launch` also stops the other ranks with SIGTERM when one
  exits non-zero; `stop_on_sigterm` makes that one line too instead of a silent death.
  (`mlx.launch` 0.32 itself exits 0 whatever its ranks did: read each rank's status in its
  `[WARN] Node with rank N exited with code C` line.)
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from .errors import DGemmaError

EXIT_RANK_LOST = 3  # a peer died or stopped answering (1 stays "your input or settings")
DEFAULT_TIMEOUT = 120.0  # seconds a collective may wait for a peer in mid-run
STARTUP_TIMEOUT = 900.0  # seconds for collectives that wait on another rank's model load
LAUNCH_ENV = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")

T = TypeVar("T")


class RankLost(DGemmaError):
    """A peer died or stopped answering; the message names it."""


class RankMismatch(DGemmaError):
    """Ranks were started with different model files or settings, or one of them could not start."""


@dataclass
class Ranks:
    """This process's place in the job. `group` is None for a group of one (no launcher)."""

    group: Any
    rank: int
    size: int
    hosts: list[str]

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def name(self, rank: int | None = None) -> str:
        """`rank 1 (127.0.0.1:32324)`: how every message names a rank."""
        r = self.rank if rank is None else rank
        host = self.hosts[r] if r < len(self.hosts) else ""
        return f"rank {r} ({host})" if host else f"rank {r}"

    def peers_name(self) -> str:
        """The rank(s) a lost connection can be blamed on: the other one, or this rank's ring neighbours."""
        if self.size == 2:
            return self.name(1 - self.rank)
        left, right = (self.rank - 1) % self.size, (self.rank + 1) % self.size
        return f"{self.name(left)} or {self.name(right)}"


def ring_hosts(environ: Mapping[str, str] = os.environ) -> list[str]:
    """Each rank's first address from the ring hostfile `mlx.launch` hands every rank (empty otherwise)."""
    path = environ.get("MLX_HOSTFILE")
    if not path:
        return []
    try:
        rows = json.loads(Path(path).read_text())
        return [row[0] if isinstance(row, list) and row else str(row) for row in rows]
    except (OSError, ValueError, TypeError):
        return []


def launched(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a launcher (mlx.launch, mpirun) started this process: read from the environment, so a
    plain run decides without importing MLX."""
    return any(k in environ for k in (*LAUNCH_ENV, "MLX_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE"))


_joined = threading.Event()  # this process joined a group of several ranks


def init(backend: str = "any") -> Ranks:
    """Join the group `mlx.launch` (or mpirun) set up; a group of one when started alone.

    A process that a launcher started as rank > 0 but that ended up alone would run the whole job
    and write the output next to rank 0: that is refused here.
    """
    import mlx.core as mx

    group = mx.distributed.init(backend=backend)
    size, rank = group.size(), group.rank()
    launched_rank = next((int(os.environ[k]) for k in LAUNCH_ENV if os.environ.get(k, "").isdigit()), 0)
    if size == 1 and launched_rank > 0:
        raise DGemmaError(
            f"this process was launched as rank {launched_rank} but could not join the group"
            " (check the hostfile and the backend)"
        )
    hosts = ring_hosts() if size > 1 else []
    if size > 1:
        _joined.set()
    return Ranks(group if size > 1 else None, rank, size, hosts)


def leave_group(code: Any = 0) -> None:
    """End a process that joined a group of several ranks with `code` (as `SystemExit` takes it), its
    output flushed, without the interpreter's teardown: destroying the ring backend's connection
    threads at exit can abort the process (`terminate called without an active exception`, exit -6)
    after the job itself has finished, seen about once in ten runs here. Alone, this returns."""
    if not _joined.is_set():
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


# -- stopping ----------------------------------------------------------------------------------------
_stop_lock = threading.Lock()


def exit_now(line: str, code: int = EXIT_RANK_LOST) -> NoReturn:
    """Print `error: line` once (the first caller wins) and end the process without unwinding.

    Used where unwinding could block: a thread watching a main thread stuck in a collective, a
    signal handler. Writes straight to fd 2 so no Python lock held elsewhere can block it.
    """
    if _stop_lock.acquire(blocking=False):
        os.write(2, f"error: {line}\n".encode("utf-8", "replace"))
    else:  # another path is already printing and exiting
        time.sleep(5)
    os._exit(code)


def stop_on_sigterm(ranks: Ranks) -> None:
    """SIGTERM (how `mlx.launch` ends the others when one rank exits non-zero) -> one line, not silence."""
    if not ranks.distributed:
        return

    def handler(signum: int, frame: Any) -> None:
        exit_now(
            f"{ranks.name()} stopped: the launcher ended the job after another rank exited"
            f" ({ranks.peers_name() if ranks.size == 2 else 'see the line naming it'})",
            EXIT_RANK_LOST,
        )

    signal.signal(signal.SIGTERM, handler)


def done_with_peers() -> None:
    """After the last collective: a SIGTERM now (the launcher reacting to another rank's ordinary exit)
    cannot cost anything, so it ends this rank quietly with status 0."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))


class Watchdog:
    """Ends the process with one line when a collective outlives its deadline (a silent peer).

    One daemon thread sleeps until the armed deadline; `guard` arms it around one blocking call.
    The thread never touches MLX, so it works while the main thread is blocked inside a collective.
    """

    def __init__(self, ranks: Ranks):
        self.ranks = ranks
        self._deadline: float | None = None
        self._what = ""
        self._timeout = 0.0
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._watch, name="dgemma-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, what: str, timeout: float) -> Iterator[None]:
        with self._wake:
            self._deadline, self._what, self._timeout = time.monotonic() + timeout, what, timeout
            self._wake.notify()
        try:
            yield
        finally:
            with self._wake:
                self._deadline = None

    def _watch(self) -> None:
        with self._wake:
            while True:
                if self._deadline is None:
                    self._wake.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                exit_now(
                    f"{self.ranks.peers_name()} stopped responding: {self.ranks.name()} waited"
                    f" {self._timeout:.0f} s for it ({self._what})"
                )


def collective(ranks: Ranks, watchdog: Watchdog | None, what: str, timeout: float, fn: Callable[[], T]) -> T:
    """Run one blocking exchange under the watchdog; a closed connection becomes `RankLost`."""
    if watchdog is None:
        return fn()
    with watchdog.guard(what, timeout):
        try:
            return fn()
        except RuntimeError as e:
            raise RankLost(f"{ranks.peers_name()} stopped responding: {ranks.name()} lost it ({e})") from None


# -- moving bytes --------------------------------------------------------------------------------------
def all_gather_bytes(ranks: Ranks, payload: bytes) -> list[bytes]:
    """Every rank's byte string, in rank order: lengths first, then the payloads padded to the longest."""
    if not ranks.distributed:
        return [payload]
    import mlx.core as mx

    count = mx.array([len(payload)], dtype=mx.int64)
    lengths = mx.distributed.all_gather(count, group=ranks.group, stream=mx.cpu)
    sizes = [int(n) for n in lengths.tolist()]
    width = max(max(sizes), 1)
    mine = mx.array(list(payload.ljust(width, b"\0")), dtype=mx.uint8)
    data = mx.distributed.all_gather(mine, group=ranks.group, stream=mx.cpu)
    raw = bytes(memoryview(data))
    return [raw[r * width : r * width + sizes[r]] for r in range(ranks.size)]


def from_root(ranks: Ranks, payload: bytes | None) -> bytes:
    """Rank 0's byte string on every rank (the others pass None)."""
    return all_gather_bytes(ranks, payload if ranks.is_root and payload is not None else b"")[0]


# -- the start-up handshake ---------------------------------------------------------------------------
def checkpoint_fingerprint(model_dir: str | Path) -> bytes:
    """What must agree across ranks about a checkpoint: config.json, generation_config.json, and the
    weight shards' names and sizes (cheap: no weight is read)."""
    root = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "generation_config.json"):
        path = root / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-") + b"\0")
    for shard in sorted(root.glob("*.safetensors")):
        h.update(f"{shard.name}:{shard.stat().st_size}\0".encode())
    return h.digest()


def _digest(value: bytes | str) -> bytes:
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).digest()


def handshake(
    ranks: Ranks,
    parts: Mapping[str, bytes | str],
    error: DGemmaError | None = None,
    watchdog: Watchdog | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Agree before heavy work, or refuse together with one line each.

    `parts` (e.g. {"model files": fingerprint, "settings": json}) are hashed and compared with rank
    0's; `error` is this rank's own set-up failure, raised here after the others have heard of it.
    Every rank must pass the same part names in the same order.
    """
    if not ranks.distributed:
        if error is not None:
            raise error
        return
    digests = {k: _digest(v).hex() for k, v in parts.items()}
    mine = {"error": None if error is None else str(error), "parts": digests}
    gathered = collective(
        ranks, watchdog, "the start-up handshake", timeout,
        lambda: [json.loads(b) for b in all_gather_bytes(ranks, json.dumps(mine).encode())],
    )  # fmt: skip
    if error is not None:
        raise error
    failed = next((r for r, g in enumerate(gathered) if g["error"] is not None), None)
    if failed is not None:
        raise RankMismatch(f"{ranks.name(failed)} could not start: {gathered[failed]['error']}")
    root = gathered[0]["parts"]
    for r, g in enumerate(gathered):
        differ = [k for k in root if g["parts"].get(k) != root[k]]
        if differ:
            raise RankMismatch(
                f"{ranks.name(r)} was started with other {' and '.join(differ)} than {ranks.name(0)}:"
                " start every rank with the same model files and settings"
            )
