"""The password database and `smbdd user`, and who may use a share: valid/invalid users,
read/write lists, hosts allow/deny. Units without I/O first, then the real server with
smbclient and smbprotocol."""
from __future__ import annotations

import io
import os
import stat
import subprocess
import time
import uuid
from types import SimpleNamespace

import pytest
from smbprotocol.connection import Connection, Dialects
from smbprotocol.exceptions import AccessDenied, LogonFailure
from smbprotocol.session import Session
from smbprotocol.tree import TreeConnect

from smbd import accounts
from smbd.server import access
from smbd.server.config import ShareConfig
from smbdd import users_cli
from tests.smbdd_process import SMBDD, Smbdd, wait_until

# ---- the database ------------------------------------------------------------------------------


def test_database_keeps_hashes_only_mode_0600_and_reads_back(tmp_path):
    path = tmp_path / "users"
    users = [accounts.make_user("alice", "pw-1", "t"), accounts.make_user("bob", "pw-2", "t", unix_user="nobody")]
    accounts.write(path, users)
    text = path.read_text()
    assert "pw-1" not in text and "pw-2" not in text
    assert f"bob:{{NT}}{users[1].nt_hash.hex()}:nobody" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert accounts.read(path) == users
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temporary file left


@pytest.mark.parametrize("line, message", [
    ("alice", "expected NAME:{NT}HASH"),
    ("alice:{NT}abcd", "must be 32 hex digits"),
    ("al/ice:pw", "invalid user name"),
    ("alice:{NT}" + "0" * 32 + ":bad:name", "invalid user name"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "users"
    path.write_text("# comment\nok:pw\n" + line + "\n")
    with pytest.raises(accounts.AccountError) as e:
        accounts.read(path)
    assert f"{path}:3:" in str(e.value) and message in str(e.value)


def test_a_user_twice_and_binary_garbage_are_errors(tmp_path):
    path = tmp_path / "users"
    path.write_text("a:pw\nA:pw2\n")
    with pytest.raises(accounts.AccountError, match="listed twice"):
        accounts.read(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(accounts.AccountError, match="not UTF-8"):
        accounts.read(path)


def test_directory_rereads_a_changed_file_and_keeps_the_last_good_one(tmp_path):
    path = tmp_path / "users"
    accounts.write(path, [accounts.make_user("alice", "pw", "t")])
    inline = (accounts.make_user("root-admin", "x", "t"),)
    directory = accounts.AccountDirectory(inline, str(path))
    assert directory.nt_hash("ALICE") == accounts.make_user("alice", "pw", "t").nt_hash
    assert directory.lookup("root-admin") is not None
    accounts.write(path, [accounts.make_user("bob", "pw", "t")])
    assert directory.lookup("alice") is None and directory.lookup("bob") is not None
    path.write_text("bob:pw\nthis line is broken\ncarol:pw\n")  # a bad hand edit costs its own line
    assert directory.lookup("bob") is not None and directory.lookup("carol") is not None
    path.write_bytes(b"\xff")  # unreadable as a whole: the users read last stay
    assert directory.lookup("bob") is not None
    os.unlink(path)
    assert directory.lookup("carol") is not None


# ---- smbdd user ---------------------------------------------------------------------------------


def user_cmd(path, *args, password: str | None = None) -> tuple[int, str]:
    out = io.StringIO()
    ns = users_cli.parser().parse_args(["--users", str(path), *args])
    try:
        users_cli.run(ns, stdin=io.StringIO("" if password is None else password + "\n"), out=out)
    except (users_cli.UserCommandError, accounts.AccountError) as e:
        return 1, str(e)
    return 0, out.getvalue()


def test_user_add_passwd_del_list(tmp_path):
    db = tmp_path / "users"
    assert user_cmd(db, "add", "alice", "--password-stdin", password="one")[0] == 0
    assert user_cmd(db, "add", "bob", "--unix-user", "nobody", "--password-stdin", password="two")[0] == 0
    rc, msg = user_cmd(db, "add", "ALICE", "--password-stdin", password="x")
    assert rc == 1 and "already exists" in msg
    assert user_cmd(db, "list")[1] == "alice\talice\nbob\tnobody\n"
    assert user_cmd(db, "passwd", "bob", "--password-stdin", password="three")[0] == 0
    bob = accounts.AccountDirectory((), str(db)).lookup("bob")
    assert bob.nt_hash == accounts.make_user("bob", "three", "t").nt_hash and bob.unix_user == "nobody"
    assert user_cmd(db, "del", "alice")[0] == 0
    rc, msg = user_cmd(db, "del", "alice")
    assert rc == 1 and "no user alice" in msg
    rc, msg = user_cmd(db, "add", "carol", "--password-stdin", password="")
    assert rc == 1 and "empty" in msg
    assert user_cmd(db, "list")[1] == "bob\tnobody\n"


def test_user_command_line_errors_are_one_line(tmp_path):
    db = tmp_path / "users"
    db.write_text("broken line\n")
    r = subprocess.run([*SMBDD, "user", "--users", str(db), "list"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and f"{db}:1" in r.stderr
    r = subprocess.run([*SMBDD, "user", "--users", str(tmp_path / "new"), "add", "x"], capture_output=True,
                       text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "--password-stdin" in r.stderr and "Traceback" not in r.stderr


# ---- access decisions ---------------------------------------------------------------------------


def test_hosts_allow_wins_over_deny_and_a_non_empty_allow_shuts_out_the_rest():
    ip = access.peer_address
    assert access.host_allowed(ip("10.1.2.3:445"), (), ())
    assert not access.host_allowed(ip("127.0.0.1:5000"), (), ("127.0.0.1",))
    assert access.host_allowed(ip("127.0.0.1:5000"), ("127.0.0.0/8",), ("ALL",))
    assert not access.host_allowed(ip("10.0.0.1:1"), ("127.0.0.0/8",), ())
    assert not access.host_allowed(ip("::1:445"), (), ("ALL",))
    assert access.host_allowed(ip("::ffff:10.0.0.7:445"), ("10.0.0.0/24",), ("ALL",))  # IPv4-mapped
    assert ip("rdma:('10.77.0.1', 4242)") == ip(("10.77.0.1", 4242)) == ip("10.77.0.1:9")
    with pytest.raises(access.AccessConfigError):
        access.parse_hosts(("10.0.0.300",), "hosts_deny")


def test_user_lists_with_names_and_unix_groups():
    share = ShareConfig("s", "/x", valid_users=("@root", "bob"), invalid_users=("mallory",),
                        read_list=("bob",), write_list=())
    assert access.share_decision(share, "alice", "root") == access.ShareDecision(True, read_only=False)
    assert access.share_decision(share, "bob", "nobody") == access.ShareDecision(True, read_only=True)
    assert not access.share_decision(share, "carol", "nobody").allowed
    assert not access.share_decision(share, None, None).allowed  # guest: in no list
    share = ShareConfig("s", "/x", read_only=True, write_list=("Alice",), invalid_users=("@root",))
    assert not access.share_decision(share, "alice", "root").allowed  # invalid wins
    share = ShareConfig("s", "/x", read_only=True, write_list=("Alice",))
    assert access.share_decision(share, "alice", "alice").read_only is False
    assert access.share_decision(share, "bob", "bob").read_only is True


# ---- the real server ----------------------------------------------------------------------------


def smbclient(port: int, share: str, user: str, password: str, command: str = "ls") -> subprocess.CompletedProcess:
    return subprocess.run(["smbclient", "-s", "/dev/null", f"//127.0.0.1/{share}", "-p", str(port),
                           "-U", f"{user}%{password}", "-m", "SMB3_11", "-c", command],
                          capture_output=True, text=True, timeout=60)


def add_user(db, name: str, password: str, *extra: str) -> None:
    r = subprocess.run([*SMBDD, "user", "--users", str(db), *extra, "add", name, "--password-stdin"],
                       input=password + "\n", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_running_server_sees_user_add_passwd_and_del_without_restart(tmp_path):
    db = tmp_path / "users"
    add_user(db, "alice", "first-pw")
    srv = Smbdd(tmp_path, "--users", str(db), user=False)
    try:
        assert smbclient(srv.port, "data", "alice", "first-pw").returncode == 0
        r = smbclient(srv.port, "data", "bob", "bob-pw")
        assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr
        add_user(db, "bob", "bob-pw")
        assert smbclient(srv.port, "data", "bob", "bob-pw").returncode == 0
        r = subprocess.run([*SMBDD, "user", "--users", str(db), "passwd", "alice", "--password-stdin"],
                           input="second-pw\n", capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        r = smbclient(srv.port, "data", "alice", "first-pw")
        assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr
        assert smbclient(srv.port, "data", "alice", "second-pw").returncode == 0
        # A broken hand edit costs its own line only, and the log names it.
        db.write_text(db.read_text() + "garbage without a colon\n")
        assert smbclient(srv.port, "data", "alice", "second-pw").returncode == 0
        assert wait_until(lambda: f"{db}:4: expected NAME" in srv.log(), 10)
        subprocess.run([*SMBDD, "user", "--users", str(db), "del", "bob"], capture_output=True, timeout=30)
        assert "expected NAME" in subprocess.run([*SMBDD, "user", "--users", str(db), "list"],
                                                 capture_output=True, text=True, timeout=30).stderr
        db.write_text("\n".join(l for l in db.read_text().splitlines() if "garbage" not in l) + "\n")
        subprocess.run([*SMBDD, "user", "--users", str(db), "del", "bob"], check=True, capture_output=True,
                       timeout=30)
        r = smbclient(srv.port, "data", "bob", "bob-pw")
        assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def lists_server(tmp_path_factory):
    """alice is Unix root (so in @root), bob is Unix nobody; four shares with lists."""
    tmp = tmp_path_factory.mktemp("access")
    db = tmp / "users"
    accounts.write(db, [accounts.make_user("alice", "alice-pw", "t", unix_user="root"),
                        accounts.make_user("bob", "bob-pw", "t", unix_user="nobody")])
    for d in ("team", "ro", "rw", "nolocal"):
        (tmp / d).mkdir()
    (tmp / "ro" / "keep.txt").write_text("read me")
    conf = tmp / "smbdd.toml"
    conf.write_text(f"""
[server]
users_file = "{db}"

[shares.team]
path = "{tmp}/team"
valid_users = ["@root", "bob"]
invalid_users = "bob"

[shares.ro]
path = "{tmp}/ro"
read_only = true
write_list = ["alice"]

[shares.rw]
path = "{tmp}/rw"
read_list = ["bob"]

[shares.nolocal]
path = "{tmp}/nolocal"
hosts_deny = ["127.0.0.0/8", "::1"]
""")
    srv = Smbdd(tmp, "--config", str(conf), user=False)
    srv.tmp = tmp
    yield srv
    srv.stop()


def test_valid_and_invalid_users_with_smbclient(lists_server):
    assert smbclient(lists_server.port, "team", "alice", "alice-pw").returncode == 0  # by @root
    r = smbclient(lists_server.port, "team", "bob", "bob-pw")  # valid, but invalid wins
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr
    assert smbclient(lists_server.port, "data", "bob", "bob-pw").returncode == 0  # no lists there


def test_read_and_write_lists_with_smbclient(lists_server):
    src = lists_server.tmp / "src.txt"
    src.write_text("payload")
    port = lists_server.port
    assert smbclient(port, "ro", "alice", "alice-pw", f"put {src} by-alice.txt").returncode == 0
    assert (lists_server.tmp / "ro" / "by-alice.txt").read_text() == "payload"
    r = smbclient(port, "ro", "bob", "bob-pw", f"put {src} by-bob.txt")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr
    assert smbclient(port, "ro", "bob", "bob-pw", f"get keep.txt {lists_server.tmp}/got.txt").returncode == 0
    assert smbclient(port, "rw", "alice", "alice-pw", f"put {src} a.txt").returncode == 0
    r = smbclient(port, "rw", "bob", "bob-pw", f"put {src} b.txt")
    assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr
    assert not (lists_server.tmp / "rw" / "b.txt").exists() and not (lists_server.tmp / "ro" / "by-bob.txt").exists()


def test_tree_connect_refusals_with_smbprotocol(lists_server):
    conn = Connection(uuid.uuid4(), "127.0.0.1", lists_server.port)
    conn.connect(Dialects.SMB_3_1_1, timeout=10)
    try:
        session = Session(conn, "bob", "bob-pw")
        session.connect()
        with pytest.raises(AccessDenied):
            TreeConnect(session, r"\\127.0.0.1\team").connect()
        with pytest.raises(AccessDenied):
            TreeConnect(session, r"\\127.0.0.1\nolocal").connect()  # hosts_deny of the share
        tree = TreeConnect(session, r"\\127.0.0.1\rw")
        tree.connect()
        assert tree.share_name.endswith("rw")
        with pytest.raises(LogonFailure):
            Session(conn, "alice", "wrong").connect()
    finally:
        conn.disconnect()


def test_server_hosts_deny_refuses_before_negotiate(tmp_path):
    conf = tmp_path / "smbdd.toml"
    conf.write_text('[server]\nhosts_deny = ["127.0.0.1"]\n')
    srv = Smbdd(tmp_path, "--config", str(conf))
    try:
        started = time.monotonic()
        r = smbclient(srv.port, "data", "alice", "s3cret-pw")
        assert r.returncode != 0 and time.monotonic() - started < 30
        assert wait_until(lambda: "refused by hosts_allow/hosts_deny" in srv.log(), 10)
        assert "serves client" not in srv.log()  # no worker saw it
    finally:
        srv.stop()
    conf.write_text('[server]\nhosts_allow = ["127.0.0.0/8"]\nhosts_deny = ["ALL"]\n')
    srv = Smbdd(tmp_path, "--config", str(conf))
    try:
        assert smbclient(srv.port, "data", "alice", "s3cret-pw").returncode == 0
    finally:
        srv.stop()


def test_bad_access_settings_are_one_clear_line(tmp_path):
    conf = tmp_path / "smbdd.toml"
    for body, message in [('[server]\nhosts_deny = ["10.0.0.300"]\n', "is not an address"),
                          (f'[shares.x]\npath = "{tmp_path}"\nvalid_users = ["ok", 2]\n', "valid string"),
                          (f'[shares.x]\npath = "{tmp_path}"\nread_list = "bad/name"\n', "not a user name"),
                          ('[server]\nusers_file = "/nonexistent/users"\n', "No such file")]:
        conf.write_text(body)
        r = subprocess.run([*SMBDD, "--config", str(conf), "--share", f"d={tmp_path}", "--user", "a:b",
                            "--port", "1", "--no-rdma"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (body, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and f"{conf}:{len(body.splitlines())}:" in r.stderr


def test_guest_is_no_user(tmp_path):
    decision = access.share_decision(SimpleNamespace(invalid_users=(), valid_users=("alice",), read_only=False,
                                                     read_list=(), write_list=()), None, None)
    assert not decision.allowed and "guest" in decision.why
