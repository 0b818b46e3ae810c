"""Loopback port helpers: pick a free TCP port, wait until a server accepts on it."""
from __future__ import annotations

import socket
import subprocess
import time


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on *host* that nobody listens on right now.

    The kernel picks it (bind to port 0); there is a small race until the server binds it,
    which is why servers that fail to bind are retried by their callers, not here.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ServerDidNotStart(RuntimeError):
    """The server process exited, or did not accept connections in time."""


def wait_for_port(host: str, port: int, timeout: float,
                  process: subprocess.Popen | None = None) -> float:
    """Poll until host:port accepts a connection; return the seconds it took.

    If *process* is given and exits first, fail at once instead of waiting out the timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerDidNotStart(f"server exited with status {process.returncode} "
                                    f"before listening on {host}:{port}")
        if port_accepts(host, port):
            return time.monotonic() - start
        time.sleep(0.05)
    raise ServerDidNotStart(f"nothing accepted on {host}:{port} within {timeout} s")
