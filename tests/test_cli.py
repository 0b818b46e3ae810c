"""The `smbdd` command line and TOML config: clear errors, the lab default, per-share options."""
from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from tests.peers.ports import free_tcp_port, wait_for_port
from tests.smbdd_process import PASSWORD, SMBDD, USER, Smbdd


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*SMBDD, *args], capture_output=True, text=True, timeout=timeout)


def smbclient(port: int, share: str, command: str, *auth: str, proto: str = "SMB3_11") -> subprocess.CompletedProcess:
    creds = list(auth) or ["-U", f"{USER}%{PASSWORD}"]
    return subprocess.run(["smbclient", "-s", "/dev/null", f"//127.0.0.1/{share}", "-p", str(port), *creds,
                           "-m", proto, "-c", command], capture_output=True, text=True, timeout=60)


def test_missing_share_path_is_one_clear_error(tmp_path):
    r = run("--share", f"x={tmp_path}/nope", "--user", "a:b", "--port", str(free_tcp_port()))
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_config_file(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[server]\nport = 'x'\n[shares.a\n")
    r = run("--config", str(conf))
    assert r.returncode == 2 and str(conf) in r.stderr and "Traceback" not in r.stderr
    conf.write_text(f"[server]\nbogus = 1\n[shares.a]\npath = '{tmp_path}'\n")
    r = run("--config", str(conf))
    assert r.returncode == 2 and "bogus" in r.stderr


def test_bad_user_spec():
    r = run("--share", "x=/tmp", "--user", "nopassword")
    assert r.returncode == 2 and "NAME:PASSWORD" in r.stderr


def test_busy_port(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        r = run("--share", f"x={tmp_path}", "--user", "a:b", "--listen", "127.0.0.1", "--port", str(port),
                "--no-rdma")
    finally:
        blocker.close()
    assert r.returncode == 1
    assert "already in use" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.peer
def test_lab_default_serves_and_prints_how_to_connect(tmp_path):
    port = free_tcp_port()
    proc = subprocess.Popen([*SMBDD, "--state-dir", str(tmp_path / "state"), "--listen", "127.0.0.1", "--port",
                             str(port), "--no-rdma"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port("127.0.0.1", port, 20, proc)
        banner = ""
        while "connect with" not in banner:
            banner += proc.stdout.readline()
        password = re.search(r"user smbuser, password (\S+)", banner).group(1)
        assert f"-p {port}" in banner
        (tmp_path / "state" / "share" / "hello.txt").write_text("hi")
        r = smbclient(port, "share", "ls", "-U", f"smbuser%{password}")
        assert r.returncode == 0 and "hello.txt" in r.stdout, r.stdout + r.stderr
        r = smbclient(port, "share", "ls", "-U", "smbuser%wrong")
        assert "NT_STATUS_LOGON_FAILURE" in r.stdout + r.stderr
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.mark.peer
def test_config_file_share_options(tmp_path):
    for d in ("rw", "ro", "pub", "sealed"):
        (tmp_path / d).mkdir()
    (tmp_path / "ro" / "keep.txt").write_text("read me")
    port = free_tcp_port()
    conf = tmp_path / "smbdd.toml"
    conf.write_text(f"""
[server]
listen = "127.0.0.1"
port = {port}

[users]
{USER} = "{PASSWORD}"

[shares.rw]
path = "{tmp_path}/rw"

[shares.ro]
path = "{tmp_path}/ro"
read_only = true

[shares.pub]
path = "{tmp_path}/pub"
guest_ok = true

[shares.sealed]
path = "{tmp_path}/sealed"
encrypt = true
""")
    proc = subprocess.Popen([*SMBDD, "--config", str(conf), "--no-rdma", "--unix-identity", "daemon"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 20, proc)
        src = tmp_path / "src.txt"
        src.write_text("payload")
        assert smbclient(port, "rw", f"put {src} a.txt").returncode == 0
        r = smbclient(port, "ro", f"put {src} a.txt")
        assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr
        assert smbclient(port, "ro", f"get keep.txt {tmp_path}/got.txt").returncode == 0
        assert (tmp_path / "got.txt").read_text() == "read me"
        r = smbclient(port, "pub", "ls", "-N")
        assert r.returncode == 0, r.stdout + r.stderr
        r = smbclient(port, "rw", "ls", "-N")
        assert r.returncode != 0
        r = smbclient(port, "sealed", f"put {src} s.txt")  # smbclient encrypts when the share asks
        assert r.returncode == 0, r.stdout + r.stderr
        r = smbclient(port, "sealed", "ls", proto="SMB2_10")  # 2.1 cannot encrypt: refused
        assert "NT_STATUS_ACCESS_DENIED" in r.stdout + r.stderr
    finally:
        proc.terminate()
        proc.wait(20)
