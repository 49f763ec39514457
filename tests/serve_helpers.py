"""A live `dgemma serve` for the server tests: a subprocess on a free port, always torn down.

The server is the real command (`dgemma serve --port 0`, which prints the port it bound), on the
word-level tiny chat model with its thinking markers made likelier (`thinking_model`) and its
EOS made rarer, so the thinking split can be seen end to end on a random model and rows live as
long as their budget. Tear-down sends SIGTERM, waits, and kills
the process group if it has not gone, so no test leaves a process behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
from tiny_models import word_chat_model

DGEMMA = [sys.executable, "-c", "from dgemma_mlx.cli.app import main; main()"]
CHANNEL_IDS = (100, 101)  # <|channel> and <channel|> in the word vocabulary
EOS_IDS = (1, 106)  # <eos> and <turn|>
KEY = "test-key-123"


def thinking_model(path: Path) -> Path:
    """The word model with the two channel markers' embedding rows x2.5 (tied: also the LM head), so
    most seeds write `<|channel>...<channel|>` and then an answer, and the EOS rows x0.3, so answers
    run to their token budget: how long a row lives is then the test's choice (`max_tokens`)."""
    word_chat_model(path)
    weights = mx.load(str(path / "model.safetensors"))
    name = next(k for k in weights if "embed_tokens" in k)
    table = np.array(weights[name])
    table[list(CHANNEL_IDS)] *= 2.5
    table[list(EOS_IDS)] *= 0.3
    weights[name] = mx.array(table)
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    return path


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: list[str]):
        self.proc, self.url, self.log = proc, url, log

    @property
    def base(self) -> str:
        return f"{self.url}/v1"


def _pump(stream, log: list[str], ready: threading.Event, found: list[str]) -> None:
    for line in iter(stream.readline, ""):
        log.append(line)
        match = re.search(r"serving .* on (http://\S+)", line)
        if match and not found:
            found.append(match.group(1))
            ready.set()
    ready.set()


@contextlib.contextmanager
def running_server(model_dir: Path, *args: str, start_timeout: float = 90.0) -> Iterator[Server]:
    """`dgemma serve --model DIR --port 0 ARGS` until the block ends (SIGTERM, then SIGKILL)."""
    cmd = [*DGEMMA, "serve", "--model", str(model_dir), "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DGEMMA_API_KEY", None)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    log: list[str] = []
    ready, found = threading.Event(), []
    threading.Thread(target=_pump, args=(proc.stdout, log, ready, found), daemon=True).start()
    try:
        ready.wait(start_timeout)
        if not found:
            raise RuntimeError("dgemma serve did not start:\n" + "".join(log))
        yield Server(proc, found[0], log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, then the whole process group killed if it outlives `timeout`; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def raw(
    method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30.0
) -> tuple[int, dict]:
    """One request with the standard library (bytes in, status and JSON out), for bodies no client
    library would send."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, {"_raw": text.decode(errors="replace"), **json.loads(text)}
