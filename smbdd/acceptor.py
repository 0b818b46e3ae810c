"""The TCP acceptor: reads each connection's first message and routes the socket.

The first message is an SMB2 NEGOTIATE (MS-SMB2 2.2.3) whose ClientGuid names the client
(2.1 and later), or an SMB1 negotiate, or a 2.0.2-only negotiate without a GUID; those
clients get a worker of their own. The raw bytes go along so the worker parses them again.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
import uuid

from smbd.server import access
from smbd.wire.header import HEADER_SIZE, PROTOCOL_ID, SMB1_ID

from .supervisor import Supervisor

log = logging.getLogger("smbdd.acceptor")

FIRST_MESSAGE_TIMEOUT = 30.0
FIRST_MESSAGE_MAX = 64 * 1024  # a NEGOTIATE is a few hundred bytes


def client_guid_of(message: bytes) -> uuid.UUID | None:
    """The ClientGuid of an SMB2 NEGOTIATE offering 2.1 or later; None otherwise."""
    if len(message) < HEADER_SIZE + 36 or message[:4] != PROTOCOL_ID:
        return None
    command = struct.unpack_from("<H", message, 12)[0]
    if command != 0:
        return None
    count = struct.unpack_from("<H", message, HEADER_SIZE + 2)[0]
    dialects = message[HEADER_SIZE + 36:HEADER_SIZE + 36 + 2 * count]
    if len(dialects) != 2 * count or all(d == 0x0202 for d in struct.unpack(f"<{count}H", dialects)):
        return None
    guid = uuid.UUID(bytes_le=bytes(message[HEADER_SIZE + 12:HEADER_SIZE + 28]))
    return None if guid.int == 0 else guid


async def read_first_frame(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes | None:
    """The first direct-TCP frame, header included; None if the peer is not speaking SMB."""
    buf = bytearray()
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[1:4], "big"):
        if len(buf) >= 4 and (buf[0] != 0 or int.from_bytes(buf[1:4], "big") > FIRST_MESSAGE_MAX):
            return None
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class Acceptor:
    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor
        self.servers: list[socket.socket] = []
        self.tasks: set[asyncio.Task] = set()
        self.accepted = 0

    def listen(self, addresses: list[str], port: int) -> None:
        """Bind every address now, so a busy port is reported before we start."""
        for addr in addresses:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((addr, port))
            except OSError:
                sock.close()
                for s in self.servers:
                    s.close()
                raise
            sock.listen(128)
            sock.setblocking(False)
            self.servers.append(sock)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.servers:
            self._spawn(self._accept_loop(loop, sock))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept_loop(self, loop, server: socket.socket) -> None:
        while True:
            try:
                conn, addr = await loop.sock_accept(server)
            except OSError as e:
                if server.fileno() < 0:
                    return
                log.warning("accept failed: %s", e)
                await asyncio.sleep(0.1)
                continue
            self.accepted += 1
            self._spawn(self._route(loop, conn, addr))

    async def _route(self, loop, conn: socket.socket, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        cfg = self.supervisor.config
        if not access.host_allowed(access.peer_address(addr), cfg.hosts_allow, cfg.hosts_deny):
            log.warning("%s: refused by hosts_allow/hosts_deny", peer)
            conn.close()  # before a byte is read: nothing of SMB is offered to this host
            return
        conn.setblocking(False)
        try:
            first = await asyncio.wait_for(read_first_frame(loop, conn), FIRST_MESSAGE_TIMEOUT)
        except (asyncio.TimeoutError, OSError):
            first = None
        if first is None or first[4:8] not in (PROTOCOL_ID, SMB1_ID):
            log.info("%s: no SMB negotiate; closed", peer)
            conn.close()
            return
        guid = client_guid_of(first[4:])
        record = {"op": "tcp", "peer": peer, "first": first.hex()}
        await self.supervisor.hand_over(guid, record, conn.detach())

    def close(self) -> None:
        for sock in self.servers:
            sock.close()
        for task in list(self.tasks):
            task.cancel()
