"""`smbdd status [--json]` while clients are connected over TCP: sessions, channels with their
bytes, tree connects, open files with share modes and oplocks, byte-range locks, signing and
encryption; the human table shows the same. (Over SMB Direct: tests/lab.)"""
from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, LockFlags, Open, RequestedOplockLevel, ShareAccess, SMB2LockElement)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from tests.smbdd_process import PASSWORD, SMBDD, USER, Smbdd

pytestmark = pytest.mark.peer


def status(srv: Smbdd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SMBDD, "status", "--pid", str(srv.proc.pid), *args], capture_output=True, text=True,
                          timeout=30)


def test_status_shows_what_connected_clients_hold(tmp_path):
    srv = Smbdd(tmp_path)
    conns = []
    try:
        conn = Connection(uuid.uuid4(), "127.0.0.1", srv.port)
        conn.connect(Dialects.SMB_3_1_1, timeout=10)
        conns.append(conn)
        session = Session(conn, USER, PASSWORD, require_encryption=True)
        session.connect()
        tree = TreeConnect(session, r"\\127.0.0.1\data")
        tree.connect()
        f = Open(tree, "report.txt")
        f.create(ImpersonationLevel.Impersonation,
                 FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ, CreateDisposition.FILE_OVERWRITE_IF,
                 CreateOptions.FILE_NON_DIRECTORY_FILE, oplock_level=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
        f.write(b"x" * 100_000, 0)
        lock = SMB2LockElement()
        lock["offset"], lock["length"] = 10, 20
        lock["flags"] = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
        f.lock([lock])

        r = status(srv, "--json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["smbdd_pid"] == srv.proc.pid
        (worker,) = [w for w in doc["workers"] if w.get("sessions")]
        (sess,) = worker["sessions"]
        assert sess["user"] == USER and sess["dialect"] == "3.1.1" and sess["encryption"] is not None
        # smbprotocol sends its UUID's bytes; the server reads a GUID (little-endian fields, MS-DTYP 2.3.4).
        assert sess["client"].startswith("127.0.0.1:")
        assert sess["client_guid"] == str(uuid.UUID(bytes_le=conn.client_guid.bytes))
        assert [t["share"] for t in sess["trees"]] == ["data"]
        (channel,) = worker["channels"]
        assert channel["transport"] == "tcp" and channel["bytes_in"] > 100_000 and channel["bytes_out"] > 0
        (op,) = [o for o in worker["opens"] if o["path"] == "report.txt"]
        assert op["share_mode"] == "R--" and op["oplock"] == "batch" and op["share"] == "data"
        assert worker["locks"] == [{"path": "report.txt", "offset": 10, "length": 20, "kind": "exclusive",
                                    "session": sess["session_id"]}]
        assert "signing_key" not in r.stdout and "session_key" not in r.stdout

        text = status(srv).stdout
        assert sess["session_id"] in text and USER in text
        assert "report.txt" in text and "batch" in text and "tcp" in text
        f.close()
        tree.disconnect()
        session.disconnect()
    finally:
        for c in conns:
            c.disconnect()
        srv.stop()


def test_status_without_a_server_says_so():
    r = subprocess.run([*SMBDD, "status", "--pid", "1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "no running smbdd" in r.stderr
