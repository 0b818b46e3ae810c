"""The harness's own plumbing, without SMB: ports, CommandServer lifecycle, ls parsing."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers.files import make_random_file, sha256_file
from tests.peers.ports import ServerDidNotStart, free_tcp_port, port_accepts
from tests.peers.server_under_test import CommandServer, smbdd_argv, ENCRYPTION_REQUIRED, SIGNING_REQUIRED
from tests.peers.smbclient_runner import check, parse_ls, SmbclientFailed

# A stand-in server: listens, logs a line, optionally ignores SIGTERM, forks a child that
# must die with it.
LISTENER = r"""
import os, signal, socket, sys, time
port, ignore_term, fork = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if fork and os.fork() == 0:
    time.sleep(3600)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen()
print("listening", port, flush=True)
while True:
    conn, _ = s.accept(); conn.close()
"""


def make_server(tmp_path, *, ignore_term=False, fork=False, argv=None, **kw):
    port = free_tcp_port()
    argv = argv or [sys.executable, "-c", LISTENER, str(port), str(int(ignore_term)),
                    str(int(fork))]
    return CommandServer(argv, log_path=tmp_path / "server.log", host="127.0.0.1",
                         port=port, share_name="share", share_path=tmp_path, user="u",
                         password="p", stop_timeout=1.0, **kw)


def _live_members(pgid: int) -> list[int]:
    """Processes of group *pgid* that are not zombies (a killed child whose parent died is
    reparented to init, which in some containers never reaps it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def test_command_server_starts_logs_and_stops(tmp_path):
    server = make_server(tmp_path)
    with server:
        assert server.running and port_accepts(server.host, server.port)
        assert server.startup_seconds < 5
    assert not server.running and not port_accepts(server.host, server.port)
    assert f"listening {server.port}" in (tmp_path / "server.log").read_text()


def test_command_server_kills_what_ignores_sigterm_and_children(tmp_path):
    server = make_server(tmp_path, ignore_term=True, fork=True)
    server.start()
    pgid = server.process.pid
    assert len(_live_members(pgid)) == 2
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    assert _live_members(pgid) == []  # the forked child died with the leader


def test_command_server_reports_early_exit_with_log(tmp_path):
    server = make_server(tmp_path, argv=[sys.executable, "-c",
                                         "import sys; print('bad option'); sys.exit(3)"])
    with pytest.raises(ServerDidNotStart, match="status 3(.|\n)*bad option"):
        server.start()
    assert not server.running


def test_command_server_times_out_when_nothing_listens(tmp_path):
    server = make_server(tmp_path, argv=["sleep", "30"], start_timeout=0.5)
    with pytest.raises(ServerDidNotStart, match="within 0.5 s"):
        server.start()
    assert server.process is None


def test_smbdd_argv_matches_agreed_command_line(tmp_path):
    argv = smbdd_argv(share_name="share", share_path=tmp_path, user="u", password="p:w",
                      host="127.0.0.1", port=4455, profile=ENCRYPTION_REQUIRED)
    assert argv == ["smbdd", "--share", f"share={tmp_path}", "--user", "u:p:w",
                    "--listen", "127.0.0.1", "--port", "4455", "--no-rdma", "--encrypt", "required",
                    "--unix-identity", "daemon"]
    argv = smbdd_argv(share_name="share", share_path=tmp_path, user="u", password="p",
                      host="127.0.0.1", port=4455, profile=SIGNING_REQUIRED)
    assert argv[-6:] == ["--encrypt", "auto", "--unix-identity", "daemon", "--signing", "required"]


def test_parse_ls_real_smbclient_lines():
    # Lines as smbclient 4.17 printed them against Samba (name padded to 35 columns,
    # attribute letters, size, date).
    out = ("  .                                   D        0  Tue Nov 24 04:55:58 2026\n"
           "  a b.txt                             A       12  Tue Nov  4 04:55:58 2026\n"
           "  f64                                 A 67108864  Tue Nov 24 04:57:05 2026\n"
           "\n\t\t264212084 blocks of size 1024. 82411572 blocks available\n")
    assert parse_ls(out) == {".": ("D", 0), "a b.txt": ("A", 12), "f64": ("A", 67108864)}


def test_check_rejects_nt_status_even_with_exit_zero():
    # smbclient -c exits 0 after a failed command; the harness must still fail.
    result = subprocess.CompletedProcess(
        ["smbclient"], 0,
        "NT_STATUS_OBJECT_NAME_NOT_FOUND removing remote directory file \\x\n", "")
    with pytest.raises(SmbclientFailed, match="OBJECT_NAME_NOT_FOUND"):
        check(result)
    assert check(subprocess.CompletedProcess(["smbclient"], 0, "ok\n", "")) == "ok\n"


def test_random_file_digest_matches_content(tmp_path):
    path = tmp_path / "r.bin"
    digest = make_random_file(path, 5 * 1024 * 1024 + 3)
    assert path.stat().st_size == 5 * 1024 * 1024 + 3
    assert sha256_file(path) == digest
    assert make_random_file(tmp_path / "s.bin", 1024) != make_random_file(tmp_path / "t.bin",
                                                                          1024)
