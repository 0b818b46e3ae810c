"""Oplock and lease breaks that reach the client even when a channel fails (MS-SMB2 3.3.4.6,
3.3.4.7: the server may send a break on any channel of the session, or for a lease on any
connection of the client).

A break written to a socket is not yet a break the client has. So, as Samba does since
4.13, each break waits for its bytes to be acknowledged by the peer's transport: for TCP,
until the kernel's send queue (SIOCOUTQ) has drained past the break's last byte; for SMB
Direct, until the proxy reports the send completion of the break's last fragment (relay
SENT, smbd.transport.proxy.send_tracked). If that has not happened after six
retransmission timeouts, the channel is taken for dead: it is closed and the same break
goes out on the next channel not yet tried. Without another channel the break is simply
left to the 35 s acknowledgment timer, as before.

The decision (``TransportAck``) is pure and takes the time and the byte counts as
arguments; ``deliver`` is the I/O around it. A transport that cannot tell what its peer
acknowledged (``delivered()`` gives None) counts as acknowledged at once, the way Samba
treats a kernel without SIOCOUTQ.

Test-only: smbtorture's FSCTL_SMBTORTURE_FORCE_UNACKED_TIMEOUT (smbd.server.handlers.ioctl,
behind the ``smbtorture_fsctl`` option) sets ``SmbConnection.force_unacked``, and then nothing
on that connection is ever acknowledged: the way smbtorture simulates a channel that died.
"""
from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .objects import Session

log = logging.getLogger("smbd.breaks")

RTO_FACTOR = 6  # Samba: five retransmissions, given up when the sixth timeout passes
DEFAULT_RTO = 0.2  # Linux's TCP_RTO_MIN, for a transport that cannot tell its own


class Ack(enum.Enum):
    ACKED = "acked"
    WAITING = "waiting"
    TIMED_OUT = "timed out"


@dataclass(frozen=True)
class TransportAck:
    """One message's bytes on one transport: ``mark`` is the transport's count of bytes
    written once the message was, ``deadline`` when to give up on the peer."""

    mark: int
    deadline: float

    def check(self, delivered: int | None, now: float) -> Ack:
        """``delivered``: bytes the peer has acknowledged so far (None: unknown)."""
        if delivered is None or delivered >= self.mark:
            return Ack.ACKED
        return Ack.TIMED_OUT if now >= self.deadline else Ack.WAITING


def delivered_bytes(conn: Any) -> int | None:
    """What ``conn``'s peer has acknowledged; 0 on a connection smbtorture told to act dead."""
    if conn.force_unacked:
        return 0
    probe = getattr(conn.transport, "delivered", None)
    return probe() if probe is not None else None


def _rto(conn: Any) -> float:
    probe = getattr(conn.transport, "retransmit_timeout", None)
    rto = probe() if probe is not None else None
    return rto if rto else DEFAULT_RTO


async def _acknowledged(conn: Any, clock: Callable[[], float], sleep: Callable[[float], Any]) -> bool:
    written = getattr(conn.transport, "written", None)
    if written is None and not conn.force_unacked:
        return True
    rto = _rto(conn)
    wait = TransportAck(written or 0, clock() + RTO_FACTOR * rto)
    while not conn.closed:
        verdict = wait.check(delivered_bytes(conn), clock())
        if verdict is Ack.ACKED:
            return True
        if verdict is Ack.TIMED_OUT:
            return False
        await sleep(rto)
    return False


async def deliver(channels: Callable[[], list], message: bytes, session: "Session | None", encrypt: bool,
                  what: str, *, clock: Callable[[], float] | None = None,
                  sleep: Callable[[float], Any] = asyncio.sleep) -> bool:
    """Send ``message`` on the first live channel of ``channels()`` (asked again after each
    failure, so channels that joined meanwhile count) until a transport acknowledges it.
    Returns whether one did. ``clock`` and ``sleep`` are the loop's unless a test passes its own."""
    clock = clock or asyncio.get_running_loop().time
    tried: list = []
    while True:
        conn = next((c for c in channels() if not c.closed and all(c is not t for t in tried)), None)
        if conn is None:
            if tried:
                log.warning("%s break: no channel left to send it on (%d tried)", what, len(tried))
            else:
                log.info("%s break: no connection to send it on", what)
            return False
        tried.append(conn)
        try:
            await conn.send_unsolicited(message, session, encrypt)
        except Exception as e:  # the channel failed under us: try the next
            log.info("%s break not sent on %s: %s", what, conn.transport.peer, e)
            continue
        if await _acknowledged(conn, clock, sleep):
            return True
        if not conn.closed:
            log.warning("%s: %s break not acknowledged by the transport in %d retransmission timeouts; "
                        "closing the channel and sending it on another", conn.transport.peer, what, RTO_FACTOR)
            conn.close()

