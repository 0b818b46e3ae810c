"""The control channel between smbdd and a worker: one SOCK_SEQPACKET socketpair.

Each record is a JSON object, optionally with file descriptors attached (SCM_RIGHTS).
smbdd -> worker: {"op": "config", ...} once, {"op": "tcp", "peer", "first": hex} + a
connected TCP socket, {"op": "channel", "peer", "kind": "rdma", ...} + a Unix socket
that carries one SMB Direct connection's SMB2 messages, {"op": "exit"}, {"op": "shutdown"}.
worker -> smbdd: {"op": "idle"} when it serves no connection any more.
"""
from __future__ import annotations

import json
import socket

MAX_RECORD = 256 * 1024
MAX_FDS = 4


def send_record(sock: socket.socket, record: dict, fds: list[int] = ()) -> None:
    data = json.dumps(record).encode()
    if len(data) > MAX_RECORD:
        raise ValueError("control record too large")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_record(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """One record and its fds; (None, []) at end of stream. Raises BlockingIOError if none is ready."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_RECORD, MAX_FDS)
    if not data:
        for fd in fds:
            _close(fd)
        return None, []
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            _close(fd)
        raise ValueError("control record lost descriptors")
    return json.loads(data), list(fds)


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass
