"""File operations as each session's Unix account (smbd.identity): ownership on disk, POSIX
permissions enforced per user, guests as the guest account, no logon without an account.
Two users and a guest against smbclient and smbprotocol, with accounts every Debian has
(daemon uid 1, bin uid 2, nobody), so no test creates or removes system users."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import AccessDenied, LogonFailure
from smbprotocol.open import (CreateDisposition, CreateOptions, FileAttributes, FilePipePrinterAccessMask,
                              ImpersonationLevel, Open, ShareAccess)
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from smbd import accounts, identity
from tests.smbdd_process import Smbdd


def _account(name):
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


DAEMON, BIN, NOBODY = _account("daemon"), _account("bin"), _account("nobody")
pytestmark = pytest.mark.skipif(not identity.supported() or not (DAEMON and BIN and NOBODY),
                                reason="needs root and the daemon, bin and nobody accounts")


def test_credentials_are_per_thread_and_nest():
    tmp_path = Path(tempfile.mkdtemp(prefix="smbdd-identity-"))  # /tmp: every user can reach it
    os.chmod(tmp_path, 0o777)
    failed = []
    creds = identity.Credentials.of_account("daemon")
    assert creds.uid == DAEMON.pw_uid and DAEMON.pw_gid in creds.groups
    started, go = threading.Event(), threading.Event()

    def as_daemon():
        try:
            act()
        except BaseException as e:
            failed.append(e)
            started.set()

    def act():
        with identity.acting_as(creds):
            open(tmp_path / "by-daemon", "w").close()
            started.set()
            go.wait(5)  # the main thread creates its file while this one is daemon
            with identity.as_server():
                open(tmp_path / "by-server-inside", "w").close()
            open(tmp_path / "by-daemon-again", "w").close()
        open(tmp_path / "by-thread-after", "w").close()

    t = threading.Thread(target=as_daemon)
    t.start()
    started.wait(5)
    open(tmp_path / "by-main", "w").close()
    go.set()
    t.join(5)
    owners = {p.name: p.stat().st_uid for p in tmp_path.iterdir()}
    shutil.rmtree(tmp_path)
    assert not failed, failed
    assert owners == {"by-daemon": DAEMON.pw_uid, "by-main": 0, "by-server-inside": 0,
                      "by-daemon-again": DAEMON.pw_uid, "by-thread-after": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identity")
    os.chmod(tmp, 0o755)
    db = tmp / "users"
    accounts.write(db, [accounts.make_user("alice", "alice-pw", "t", unix_user="daemon"),
                        accounts.make_user("bob", "bob-pw", "t", unix_user="bin"),
                        accounts.make_user("carol", "carol-pw", "t", unix_user="no-such-account")])
    share = tmp / "share"
    share.mkdir()
    os.chmod(share, 0o777)  # every user may create here; what they create is theirs
    pub = tmp / "pub"
    pub.mkdir()
    os.chmod(pub, 0o777)
    conf = tmp / "smbdd.toml"
    conf.write_text(f'[server]\nusers_file = "{db}"\nguest_account = "nobody"\n'
                    f'[shares.pub]\npath = "{pub}"\nguest_ok = true\n')
    srv = Smbdd(tmp, "--config", str(conf), "--unix-identity", "users", share=share, user=False)
    srv.pub = pub
    yield srv
    srv.stop()


def smbclient(server, share: str, command: str, *auth: str) -> subprocess.CompletedProcess:
    return subprocess.run(["smbclient", "-s", "/dev/null", f"//127.0.0.1/{share}", "-p", str(server.port),
                           *auth, "-m", "SMB3_11", "-c", command], capture_output=True, text=True, timeout=60)


def test_files_belong_to_the_user_who_created_them(server, tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("payload")
    assert smbclient(server, "data", f"put {src} alice.txt", "-U", "alice%alice-pw").returncode == 0
    assert smbclient(server, "data", f"mkdir bobdir; put {src} bobdir/bob.txt", "-U", "bob%bob-pw").returncode == 0
    st = (server.share / "alice.txt").stat()
    assert (st.st_uid, st.st_gid) == (DAEMON.pw_uid, DAEMON.pw_gid)
    assert (server.share / "bobdir").stat().st_uid == BIN.pw_uid
    assert (server.share / "bobdir" / "bob.txt").stat().st_uid == BIN.pw_uid


def test_posix_permissions_hold_per_user(server, tmp_path):
    (server.share / "private.txt").write_text("alice only")
    os.chown(server.share / "private.txt", DAEMON.pw_uid, DAEMON.pw_gid)
    os.chmod(server.share / "private.txt", 0o600)
    r = smbclient(server, "data", f"get private.txt {tmp_path}/by-bob", "-U", "bob%bob-pw")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr and not (tmp_path / "by-bob").exists()
    assert smbclient(server, "data", f"get private.txt {tmp_path}/by-alice", "-U", "alice%alice-pw").returncode == 0
    assert (tmp_path / "by-alice").read_text() == "alice only"
    # A directory of alice's, 0755: bob may look but not create or delete in it.
    d = server.share / "alicedir"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    os.chown(d, DAEMON.pw_uid, DAEMON.pw_gid)
    os.chmod(d, 0o755)
    r = smbclient(server, "data", "del alicedir/keep.txt", "-U", "bob%bob-pw")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr and (d / "keep.txt").exists()
    r = smbclient(server, "data", f"put {tmp_path}/by-alice alicedir/new.txt", "-U", "bob%bob-pw")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr and not (d / "new.txt").exists()
    assert smbclient(server, "data", "ls alicedir/*", "-U", "bob%bob-pw").returncode == 0


def _session(server, user: str, password: str):
    conn = Connection(uuid.uuid4(), "127.0.0.1", server.port)
    conn.connect(Dialects.SMB_3_1_1, timeout=10)
    session = Session(conn, user, password)
    session.connect()
    tree = TreeConnect(session, r"\\127.0.0.1\data")
    tree.connect()
    return conn, tree


def _open(tree, name: str, access: int, disposition: int) -> Open:
    op = Open(tree, name)
    op.create(ImpersonationLevel.Impersonation, access, FileAttributes.FILE_ATTRIBUTE_NORMAL,
              ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE, disposition,
              CreateOptions.FILE_NON_DIRECTORY_FILE)
    return op


def test_smbprotocol_sees_the_same_and_streams_still_work(server):
    (server.share / "ro-for-bob.txt").write_text("data")
    os.chown(server.share / "ro-for-bob.txt", DAEMON.pw_uid, DAEMON.pw_gid)
    os.chmod(server.share / "ro-for-bob.txt", 0o644)
    conn, tree = _session(server, "bob", "bob-pw")
    try:
        f = _open(tree, "ro-for-bob.txt", FilePipePrinterAccessMask.GENERIC_READ, CreateDisposition.FILE_OPEN)
        assert f.read(0, 4) == b"data"
        f.close()
        with pytest.raises(AccessDenied):
            _open(tree, "ro-for-bob.txt", FilePipePrinterAccessMask.GENERIC_WRITE, CreateDisposition.FILE_OPEN)
        # A named stream on bob's own file: the stream depot stays the server's.
        f = _open(tree, "bobs.txt", FilePipePrinterAccessMask.GENERIC_ALL, CreateDisposition.FILE_OVERWRITE_IF)
        f.close()
        s = _open(tree, "bobs.txt:notes", FilePipePrinterAccessMask.GENERIC_ALL, CreateDisposition.FILE_OVERWRITE_IF)
        s.write(b"stream data", 0)
        assert s.read(0, 11) == b"stream data"
        s.close()
        assert (server.share / "bobs.txt").stat().st_uid == BIN.pw_uid
    finally:
        conn.disconnect()


def test_no_unix_account_no_logon(server):
    r = smbclient(server, "data", "ls", "-U", "carol%carol-pw")
    assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr
    assert "no Unix account 'no-such-account'" in server.log()
    conn = Connection(uuid.uuid4(), "127.0.0.1", server.port)
    conn.connect(Dialects.SMB_3_1_1, timeout=10)
    try:
        with pytest.raises(LogonFailure):
            Session(conn, "carol", "carol-pw").connect()
    finally:
        conn.disconnect()


def test_guest_works_as_the_guest_account(server, tmp_path):
    src = tmp_path / "g.txt"
    src.write_text("guest")
    r = smbclient(server, "pub", f"put {src} guest.txt", "-N")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (server.pub / "guest.txt").stat().st_uid == NOBODY.pw_uid


def test_a_stored_dacl_tells_the_users_apart(server, tmp_path):
    """A DACL granting only alice's Unix SID (S-1-22-1-<uid of daemon>): bob is refused even
    though the mode lets everyone read; alice reads."""
    from smbd.security.sd import Ace, Acl, Control, SecurityDescriptor
    from smbd.security.sid import unix_user
    from smbd.security.store import save_stored

    path = server.share / "alice-acl.txt"
    path.write_text("for alice")
    os.chown(path, DAEMON.pw_uid, DAEMON.pw_gid)
    os.chmod(path, 0o666)
    fd = os.open(path, os.O_RDONLY)
    try:
        save_stored(fd, SecurityDescriptor(Control.SELF_RELATIVE | Control.DACL_PRESENT,
                                           owner=unix_user(DAEMON.pw_uid),
                                           dacl=Acl((Ace.allow(unix_user(DAEMON.pw_uid), 0x001F01FF),))))
    finally:
        os.close(fd)
    r = smbclient(server, "data", f"get alice-acl.txt {tmp_path}/bob", "-U", "bob%bob-pw")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr and not (tmp_path / "bob").exists()
    assert smbclient(server, "data", f"get alice-acl.txt {tmp_path}/alice", "-U", "alice%alice-pw").returncode == 0
    assert (tmp_path / "alice").read_text() == "for alice"
