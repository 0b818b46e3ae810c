"""A session-binding channel that reached the wrong worker moves to the session's worker.

smbdd routes a connection by the ClientGUID of its NEGOTIATE (smbdd.acceptor), but a
client may bind (MS-SMB2 3.3.5.5.2) a connection that negotiated with another ClientGUID,
or none, to a session. Such a bind reaches a worker that does not hold the session. That
worker checks the request against the session's global record (handlers.session.
_check_bind) and then passes the connection itself to the session's worker, as Samba
passes a connection to the process that owns its client: a duplicate of the TCP socket or
of the SMB Direct relay socket, the bytes read and not delivered yet, what NEGOTIATE decided
with the credit window, and the SESSION_SETUP request. The session's worker processes that
request as if it had arrived there. The client sees one connection throughout.

A channel moves only while it carries nothing but the bind: no session of its own, no
other request, no RDMA operation in flight (those would finish in the wrong process).
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Awaitable, Callable

from smbd.status import NtStatus, SmbError
from smbd.wire.header import Command, Header

from .messaging import MessageError

if TYPE_CHECKING:
    from .connection import Request, SmbConnection
    from .state import ServerState

log = logging.getLogger("smbd.channel_move")

# (transport kind, descriptor, peer, SMB Direct setup) -> the new, not yet reading, connection
OpenChannel = Callable[[str, int, str, "dict | None"], Awaitable["SmbConnection"]]


class ChannelMoved(SmbError):
    """The connection went to another worker: nothing is answered here."""

    def __init__(self, pid: int):
        super().__init__(NtStatus.REQUEST_NOT_ACCEPTED, f"channel moved to worker {pid}")


def serve_requests(server: "ServerState", open_channel: OpenChannel) -> None:
    server.messenger.handlers["adopt_channel"] = lambda body, fds: _adopt(body, fds, open_channel)


def why_not_movable(req: "Request") -> str | None:
    conn, server = req.conn, req.server
    if req.encrypted or req.compound is None or len(req.compound.requests) != 1:
        return "the bind is encrypted or part of a compound"
    if not hasattr(conn.transport, "detach"):
        return "this transport cannot move"
    if len(conn.tasks) > 1 or len(conn.sync_requests) > 1 or conn.async_requests or conn.session_auths:
        return "other requests in progress on the connection"
    if any(s.channel_for(conn) is not None for s in server.sessions.values()):
        return "the connection already has a session here"
    return None


async def move_to(req: "Request", pid: int) -> None:
    """Pass this connection and its bind request to worker ``pid``. Always raises: ChannelMoved
    once the other worker has it, else REQUEST_NOT_ACCEPTED (answered here) when it cannot move.
    """
    conn = req.conn
    why = "the session's worker is this one" if pid == os.getpid() else why_not_movable(req)
    if why is not None:
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED, f"session belongs to another worker; {why}")
    try:
        fd, pending = conn.transport.detach()
    except (BlockingIOError, ConnectionResetError) as e:
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED, f"channel cannot move now: {e}") from e
    setup = getattr(conn.transport, "setup_info", None)  # SMB Direct: the proxy's SETUP
    body = {"transport": "rdma" if setup else "tcp", "peer": conn.transport.peer, "setup": setup,
            "negotiated": conn.negotiated_state(), "request": bytes(req.msg).hex(), "pending": pending.hex()}
    try:
        reply, reply_fds = await req.server.messenger.ask(pid, "adopt_channel", body, [fd])
        for extra in reply_fds:
            os.close(extra)
    except MessageError as e:
        # The other worker may still take it: reading here too would split the stream.
        log.warning("%s: channel not moved to worker %d (%s); dropped", conn.transport.peer, pid, e)
        conn.handed_off()
        raise ChannelMoved(pid) from e
    finally:
        os.close(fd)
    if not reply.get("adopted"):
        conn.transport.resume_reading()
        raise SmbError(NtStatus.REQUEST_NOT_ACCEPTED, f"worker {pid} did not take the channel: {reply.get('why')}")
    log.info("%s: channel moved to worker %d, which holds session %x", conn.transport.peer, pid,
             req.header.session_id)
    conn.handed_off()
    raise ChannelMoved(pid)


async def _adopt(body: dict, fds: list[int], open_channel: OpenChannel) -> tuple[dict, list[int]]:
    """Take a channel another worker passed with its bind request (``move_to``)."""
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        return {"adopted": False, "why": "expected one descriptor"}, []
    try:
        kind = body["transport"]
        request, pending = bytes.fromhex(body["request"]), bytes.fromhex(body["pending"])
        negotiated = body["negotiated"]
        if kind not in ("tcp", "rdma") or not isinstance(negotiated, dict):
            raise ValueError(f"transport {kind!r}")
        if Header.parse(request).command != Command.SESSION_SETUP:
            raise ValueError("not a SESSION_SETUP")
    except (KeyError, ValueError, TypeError) as e:
        os.close(fds[0])
        return {"adopted": False, "why": f"bad request: {e}"}, []
    conn = await open_channel(kind, fds[0], str(body.get("peer", "?")), body.get("setup"))
    try:
        conn.restore_negotiated(negotiated)
    except (KeyError, ValueError, TypeError) as e:
        conn.handed_off()  # closes our copy only; the sender goes on with the connection
        return {"adopted": False, "why": f"bad negotiated state: {e}"}, []
    conn.receive(request, charged=True)
    conn.transport.feed_initial(pending)
    conn.transport.resume_reading()
    log.info("%s: channel taken over from another worker for a bind", conn.transport.peer)
    return {"adopted": True}, []
