"""READ over TCP with sendfile: a plain (unsigned, unencrypted, not compounded) READ's data
goes from the file to the socket in the kernel (smbd.transport.tcp.FileSpan); signed and
encrypted READs still copy, since their bytes must be hashed or sealed. Against smbprotocol
and smbclient, and the transport's edge cases on a socketpair."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import uuid

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from smbd.transport.tcp import FileSpan, TcpTransport
from tests.smbdd_process import PASSWORD, USER, Smbdd
from tests.test_status import status

MIB = 1024 * 1024


def _channel(srv: Smbdd, conn: Connection) -> dict:
    """``smbdd status --json``'s entry for the connection (its ClientGUID, read as a GUID)."""
    r = status(srv, "--json")
    assert r.returncode == 0, r.stderr
    guid = str(uuid.UUID(bytes_le=conn.client_guid.bytes))
    (channel,) = [c for w in json.loads(r.stdout)["workers"] for c in w.get("channels", ())
                  if c["client_guid"] == guid]
    return channel


@contextlib.contextmanager
def _opened(srv: Smbdd, name: str, *, sign: bool, encrypt: bool):
    """(connection, the file opened for reading) on a session that signs or seals or neither."""
    conn = Connection(uuid.uuid4(), "127.0.0.1", srv.port, require_signing=sign)
    conn.connect(Dialects.SMB_3_1_1, timeout=10)
    try:
        session = Session(conn, USER, PASSWORD, require_encryption=encrypt)
        session.connect()
        tree = TreeConnect(session, r"\\127.0.0.1\data")
        tree.connect()
        f = Open(tree, name)
        f.create(ImpersonationLevel.Impersonation, FilePipePrinterAccessMask.GENERIC_READ,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ, CreateDisposition.FILE_OPEN,
                 CreateOptions.FILE_NON_DIRECTORY_FILE)
        yield conn, f
        f.close()
    finally:
        conn.disconnect()


@pytest.mark.peer
@pytest.mark.parametrize("sign,encrypt,by_sendfile", [(False, False, True), (True, False, False),
                                                      (False, True, False)], ids=["plain", "signed", "sealed"])
def test_reads_go_by_sendfile_only_when_unsigned_and_unsealed(tmp_path, sign, encrypt, by_sendfile):
    srv = Smbdd(tmp_path)
    try:
        size = 3 * MIB + 12345
        payload = os.urandom(size)
        (srv.share / "big.bin").write_bytes(payload)
        with _opened(srv, "big.bin", sign=sign, encrypt=encrypt) as (conn, f):
            data = b"".join(f.read(off, min(MIB, size - off)) for off in range(0, size, MIB))
            assert data == payload
            # Across the end of the file: DataLength is what is left (a short read).
            assert f.read(size - 1000, 200_000) == payload[-1000:]
            assert f.read(0, 4096) == payload[:4096]  # below SENDFILE_MIN: copied
            channel = _channel(srv, conn)
            # The three whole MiB and the short read's 1000 bytes (it asked for 200 000); the
            # last 12 345-byte read and the 4 KiB one were asked for below SENDFILE_MIN.
            assert channel["sendfile_bytes"] == (3 * MIB + 1000 if by_sendfile else 0)
            assert channel["bytes_out"] > size
    finally:
        srv.stop()


@pytest.mark.peer
def test_smbclient_gets_a_file_sent_by_sendfile(tmp_path):
    if shutil.which("smbclient") is None:
        pytest.skip("smbclient is not installed (apt: smbclient)")
    srv = Smbdd(tmp_path)
    try:
        payload = os.urandom(20 * MIB + 7)
        (srv.share / "file.bin").write_bytes(payload)
        out = tmp_path / "got.bin"
        r = subprocess.run(["smbclient", "//127.0.0.1/data", "-p", str(srv.port), "-U", f"{USER}%{PASSWORD}",
                            "-m", "SMB3_11", "-c", f"get file.bin {out}"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(payload).digest()
    finally:
        srv.stop()


# ---- the transport alone, on a socketpair --------------------------------------------------------


def _send_over_socketpair(parts_for, expect: int) -> tuple[bytes, TcpTransport]:
    """Run one TcpTransport.send(parts_for()) on one end; what the other end received."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)

    async def go() -> tuple[TcpTransport, bytes]:
        loop = asyncio.get_running_loop()
        proto = TcpTransport("pair", 1 << 24, lambda m: None, lambda: None)
        await loop.connect_accepted_socket(lambda: proto, ours)
        got = bytearray()

        async def receive() -> None:
            while len(got) < expect:
                got.extend(await loop.run_in_executor(None, theirs.recv, 1 << 20))

        receiver = asyncio.ensure_future(receive())
        await proto.send(parts_for())
        await asyncio.wait_for(receiver, 30)
        proto.close()
        return proto, bytes(got)

    try:
        proto, got = asyncio.run(go())
    finally:
        theirs.close()
    return got, proto


def test_a_span_past_the_end_of_a_file_that_shrank_is_padded_with_zeros(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        # The header promised 300 000 bytes; the file has 100 000 when they are sent.
        got, proto = _send_over_socketpair(lambda: [b"HEAD", FileSpan(fd, 0, 300_000)], 4 + 4 + 300_000)
    finally:
        os.close(fd)
    assert got[:4] == (4 + 300_000).to_bytes(4, "big") and got[4:8] == b"HEAD"
    assert got[8:] == b"a" * 100_000 + bytes(200_000)
    assert proto.sendfile_bytes == 100_000


def test_a_span_keeps_its_file_when_the_handle_closes_before_the_send(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 1024)
    fd = os.open(path, os.O_RDONLY)
    span = FileSpan(fd, 1000, 200_000)
    os.close(fd)  # a CLOSE of the handle between the READ and its response
    other = os.open(tmp_path / "other", os.O_RDWR | os.O_CREAT)  # may reuse the number
    try:
        got, _ = _send_over_socketpair(lambda: [b"", span], 4 + 200_000)
    finally:
        os.close(other)
        span.close()
    assert got[4:] == (bytes(range(256)) * 1024)[1000:201_000]
