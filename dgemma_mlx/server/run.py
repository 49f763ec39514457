"""Serving the app with uvicorn, and shutting down cleanly on SIGINT/SIGTERM.

On the first signal uvicorn stops listening (the port is released for the next server) and waits for
open requests; the scheduler drains at the same moment: new jobs are refused (503), running ones
finish, and whatever is still running at `shutdown_timeout` ends with an OpenAI error object instead
of a cut connection. uvicorn's own grace period is a little longer than ours, so that error is
delivered before it would cancel the handlers. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn

from ..errors import DGemmaError

if TYPE_CHECKING:  # the scheduler pulls in MLX; `check_bindable` runs before that is needed
    from .scheduler import Scheduler

LOCAL_NAMES = {"localhost", "localhost.localdomain"}


def is_local(host: str) -> bool:
    """Whether `host` only listens on this machine (a loopback address or name)."""
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bindable(host: str, port: int) -> None:
    """Fail in one line before the model loads if `host:port` cannot be listened on (in use, no such
    address, a privileged port): the socket is bound and released again at once."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DGemmaError(f"cannot listen on {host}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            raise DGemmaError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


class DrainingServer(uvicorn.Server):
    """uvicorn's server that tells the scheduler to drain on the first signal, says where it listens
    once the socket is bound (the real port when asked for port 0), and exits normally afterwards."""

    def __init__(
        self,
        config: uvicorn.Config,
        scheduler: Scheduler,
        shutdown_timeout: float,
        announce: Callable[[str], None],
    ):
        super().__init__(config)
        self.scheduler = scheduler
        self.shutdown_timeout = shutdown_timeout
        self.announce = announce

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            self.announce("shutting down: finishing running requests (Ctrl-C again to stop now)")
            self.scheduler.drain(self.shutdown_timeout)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers, without re-raising the signal afterwards: a drained server exits 0."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.announce(f"serving {self.config.app.state.dgemma.served_name} on http://{host}:{port}")
                sys.stdout.flush()


def serve(
    app: Any,
    scheduler: Scheduler,
    host: str,
    port: int,
    shutdown_timeout: float,
    announce: Callable[[str], None],
    log_level: str = "warning",
) -> None:
    """Run until a signal; the scheduler is started here and closed after the last connection."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(shutdown_timeout) + 5,
        lifespan="off",
        access_log=log_level in ("info", "debug"),
    )
    server = DrainingServer(config, scheduler, shutdown_timeout, announce)
    scheduler.start()
    try:
        server.run()
    except SystemExit as e:  # uvicorn could not start (it logged why): one line, exit 1
        raise DGemmaError(f"the server could not start on {host}:{port}") from e
    finally:
        scheduler.close(timeout=5.0)
