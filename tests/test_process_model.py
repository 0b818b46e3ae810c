"""The process model with real clients: one worker per ClientGUID, crash isolation, shutdown."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import uuid

import pytest
from impacket.smbconnection import SMBConnection

from tests.smbdd_process import PASSWORD, USER, Smbdd, alive, wait_until

pytestmark = pytest.mark.peer


def impacket_client(server: Smbdd) -> SMBConnection:
    conn = SMBConnection("127.0.0.1", "127.0.0.1", sess_port=server.port, timeout=30)
    conn.login(USER, PASSWORD)
    return conn


@pytest.fixture
def server(tmp_path):
    srv = Smbdd(tmp_path)
    yield srv
    srv.stop()


def test_two_clients_get_two_workers(server):
    a, b = impacket_client(server), impacket_client(server)
    a.putFile("data", "a.bin", io.BytesIO(b"a" * 1000).read)
    b.putFile("data", "b.bin", io.BytesIO(b"b" * 1000).read)
    pids = server.worker_pids()
    assert len(set(pids)) == 2, server.log()
    assert all(alive(p) for p in pids)
    a.logoff()
    b.logoff()


def test_same_client_guid_shares_one_worker(server):
    """Two connections naming one ClientGUID are served by the same process (multichannel)."""
    from smbprotocol.connection import Connection
    from smbprotocol.session import Session

    guid = uuid.uuid4()
    conns = []
    for _ in range(2):
        c = Connection(guid, "127.0.0.1", server.port)
        c.connect(timeout=10)
        s = Session(c, USER, PASSWORD, require_encryption=False)
        s.connect()
        conns.append((c, s))
    assert len(server.worker_pids()) == 1, server.log()
    for c, s in conns:
        s.disconnect()
        c.disconnect()


def smbclient(server: Smbdd, command: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["smbclient", "-s", "/dev/null", f"//127.0.0.1/data", "-p", str(server.port),
                             "-U", f"{USER}%{PASSWORD}", "-m", "SMB3_11", "-c", command],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_worker_killed_mid_transfer_leaves_others_intact(server, tmp_path):
    src = tmp_path / "payload"
    src.write_bytes(os.urandom(64 * 1024 * 1024))
    victim = smbclient(server, f"put {src} victim.bin")
    assert wait_until(lambda: (server.share / "victim.bin").exists(), 20), server.log()
    victim_pid = server.worker_pids()[0]

    back = tmp_path / "back"
    survivor = smbclient(server, f"put {src} big.bin; get big.bin {back}")
    assert wait_until(lambda: len(server.worker_pids()) == 2, 20), server.log()
    survivor_pid = server.worker_pids()[1]
    os.kill(victim_pid, signal.SIGKILL)
    victim.communicate(timeout=60)
    out, _ = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, out
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()
    assert wait_until(lambda: f"worker {victim_pid} for client" in server.log(), 10), server.log()
    assert "SIGKILL" in server.log()
    # The survivor's worker never died; once its client left it retired cleanly.
    assert f"worker {survivor_pid} for client" not in server.log()
    # smbdd goes on: a new client is served.
    fresh = impacket_client(server)
    names = [f.get_longname() for f in fresh.listPath("data", "*")]
    assert "big.bin" in names
    fresh.logoff()


def test_sigterm_stops_in_order(tmp_path):
    srv = Smbdd(tmp_path)
    c = impacket_client(srv)
    c.putFile("data", "f", io.BytesIO(b"data").read)
    pids = srv.worker_pids()
    assert srv.stop(timeout=30) == 0
    log = srv.log_path.read_text()
    assert "shutting down" in log and "stopped" in log
    assert wait_until(lambda: not any(alive(p) for p in pids), 5)
