"""SIGHUP: shares, users and access lists reloaded while a client stays connected (smbprotocol,
an open file across the reload) and new logons and tree connects see the change (smbclient);
a broken file changes nothing."""
from __future__ import annotations

import signal
import subprocess
import uuid

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import AccessDenied
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from tests.smbdd_process import Smbdd, wait_until

pytestmark = pytest.mark.peer


def smbclient(port: int, share: str, user: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(["smbclient", "-s", "/dev/null", f"//127.0.0.1/{share}", "-p", str(port),
                           "-U", f"{user}%{password}", "-m", "SMB3_11", "-c", "ls"],
                          capture_output=True, text=True, timeout=60)


def write_config(conf, tmp, *, second_share: bool, bob: bool, alice_denied: bool) -> None:
    conf.write_text(f"""
[users]
alice = "alice-pw"
{'bob = "bob-pw"' if bob else ''}

[shares.one]
path = "{tmp}/one"
{'invalid_users = ["alice"]' if alice_denied else ''}
""" + (f'\n[shares.two]\npath = "{tmp}/two"\n' if second_share else ""))


def reloaded(srv: Smbdd, count: int) -> bool:
    return srv.log().count("configuration reloaded") >= count


def test_sighup_reloads_shares_users_and_lists_without_dropping_a_client(tmp_path):
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
    conf = tmp_path / "smbdd.toml"
    write_config(conf, tmp_path, second_share=False, bob=False, alice_denied=False)
    srv = Smbdd(tmp_path, "--config", str(conf), "--spare-workers", "1", user=False)
    conn = Connection(uuid.uuid4(), "127.0.0.1", srv.port)
    conn.connect(Dialects.SMB_3_1_1, timeout=10)
    try:
        session = Session(conn, "alice", "alice-pw")
        session.connect()
        tree = TreeConnect(session, r"\\127.0.0.1\one")
        tree.connect()
        f = Open(tree, "kept.bin")
        f.create(ImpersonationLevel.Impersonation,
                 FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE,
                 FileAttributes.FILE_ATTRIBUTE_NORMAL, ShareAccess.FILE_SHARE_READ, CreateDisposition.FILE_OVERWRITE_IF,
                 CreateOptions.FILE_NON_DIRECTORY_FILE)
        f.write(b"before ", 0)
        assert "NT_STATUS_BAD_NETWORK_NAME" in smbclient(srv.port, "two", "alice", "alice-pw").stdout
        assert "NT_STATUS_LOGON_FAILURE" in smbclient(srv.port, "one", "bob", "bob-pw").stdout

        workers = len(srv.worker_pids())
        write_config(conf, tmp_path, second_share=True, bob=True, alice_denied=True)
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reloaded: 3 share(s)" in srv.log(), 10), srv.log()[-2000:]  # data, one, two
        # Every running worker took it (the client's and the spare).
        assert wait_until(lambda: reloaded(srv, 2), 10), srv.log()[-2000:]

        # The connected client goes on: its tree and open file work after the reload.
        f.write(b"and after", 7)
        assert f.read(0, 16) == b"before and after"
        f.close()
        assert (tmp_path / "one" / "kept.bin").read_bytes() == b"before and after"
        # New tree connects and logons see the new configuration.
        with pytest.raises(AccessDenied):
            TreeConnect(session, r"\\127.0.0.1\one").connect()
        two = TreeConnect(session, r"\\127.0.0.1\two")
        two.connect()
        assert smbclient(srv.port, "two", "bob", "bob-pw").returncode == 0
        r = smbclient(srv.port, "one", "alice", "alice-pw")
        assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr
        assert len(srv.worker_pids()) > workers  # the new logons came after the reload in new workers

        # A broken file: the reload is refused with its line, and nothing changes.
        conf.write_text(conf.read_text() + "\n[shares.three]\nread_only = 7\n")
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in srv.log(), 10)
        assert f"{conf}:" in srv.log().split("reload refused")[1]
        assert smbclient(srv.port, "two", "bob", "bob-pw").returncode == 0
        assert srv.proc.poll() is None
    finally:
        conn.disconnect()
        srv.stop()
