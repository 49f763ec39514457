"""SIGTERM under load: running responses finish (or end with a proper error at the timeout), no new
connection is taken, the process exits 0 and the port is free again. Streams are read as raw bytes,
so a cut-off response cannot pass for a finished one.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.parse

import pytest
from serve_helpers import DGEMMA, raw, running_server, thinking_model, wait_until


def sse_events(url: str, body: dict, out: list, timeout: float = 120.0) -> None:
    """POST a streaming request and append every `data:` payload to `out` until the server closes."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        out.append(response.status)
        for line in response:
            if line.startswith(b"data: "):
                out.append(line[6:].decode().strip())
    except (OSError, http.client.HTTPException) as e:
        out.append(e)
    finally:
        conn.close()


def request(name: str, i: int, max_tokens: int, **extra) -> dict:
    return {
        "model": name,
        "messages": [{"role": "user", "content": "tell me a story " + "and " * i}],
        "seed": i,
        "max_tokens": max_tokens,
        "stream": True,
        **extra,
    }


def start_streams(server, count: int, max_tokens: int, **extra) -> tuple[list[list], list[threading.Thread]]:
    name = raw("GET", f"{server.url}/health")[1]["model"]
    outs: list[list] = [[] for _ in range(count)]
    threads = [
        threading.Thread(target=sse_events, args=(server.url, request(name, i, max_tokens, **extra), outs[i]))
        for i in range(count)
    ]
    for t in threads:
        t.start()

    def loaded() -> bool:  # every request arrived, and most are still running (none may end first)
        health = raw("GET", f"{server.url}/health")[1]
        return health["requests"] == count and health["rows_running"] + health["rows_waiting"] >= count - 1

    assert wait_until(loaded, 30)
    return outs, threads


def port_is_free(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((parts.hostname, parts.port))
            return True
        except OSError:
            return False


def refused(url: str) -> bool:
    try:
        raw("GET", f"{url}/health", timeout=2)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_running_streams_finish_and_releases_the_port(tmp_path, sig):
    with running_server(thinking_model(tmp_path), "--max-batch", "8", "--shutdown-timeout", "30") as server:
        outs, threads = start_streams(server, 6, max_tokens=80)  # 10 canvases each
        server.proc.send_signal(sig)
        assert wait_until(lambda: refused(server.url), 10)  # no new connections from here on
        for t in threads:
            t.join(60)
        assert server.proc.wait(30) == 0
        assert not any(t.is_alive() for t in threads)
        for out in outs:
            assert out[0] == 200 and out[-1] == "[DONE]", out[-3:]
            chunks = [json.loads(d) for d in out[1:-1]]
            finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
            assert finishes[-1] in ("stop", "length") and chunks[-1]["usage"]["completion_tokens"] > 0
            assert not any("error" in c for c in chunks)
        assert port_is_free(server.url)
        assert "stopped" in "".join(server.log)


def test_streams_still_running_at_the_timeout_end_with_an_error_object(tmp_path):
    with running_server(thinking_model(tmp_path), "--shutdown-timeout", "1") as server:
        # 400 passes per canvas (never confident enough to stop early): the first canvas outlasts 1 s
        slow = {"max_denoising_steps": 400, "confidence_threshold": 1e-12}
        outs, threads = start_streams(server, 2, max_tokens=800, **slow)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.proc.wait(30) == 0
        for out in outs:
            assert out[0] == 200 and out[-1] == "[DONE]", out[-3:]
            error = json.loads(out[-2])["error"]
            assert error["type"] == "server_error" and "shutting down" in error["message"]
        assert port_is_free(server.url)


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*DGEMMA, "serve", "--model", str(tmp_path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
