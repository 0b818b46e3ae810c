"""Workers forked from the zygote (smbd.zygote): children of it, reported when they end with
their real exit status, and smbdd goes on starting workers as new processes if it dies."""
from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from tests.smbdd_process import PASSWORD, USER, Smbdd, alive, wait_until

pytestmark = pytest.mark.peer


def ls(srv: Smbdd) -> None:
    r = subprocess.run(["smbclient", "-s", "/dev/null", "//127.0.0.1/data", "-p", str(srv.port),
                        "-U", f"{USER}%{PASSWORD}", "-m", "SMB3_11", "-c", "ls"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def parent_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def test_workers_are_forked_and_smbdd_copes_without_the_zygote(tmp_path):
    srv = Smbdd(tmp_path)
    try:
        zygote = int(re.search(r"zygote (\d+) started", srv.log())[1])
        ls(srv)
        assert wait_until(lambda: len(re.findall(r"worker (\d+) started", srv.log())) >= 2, 10)
        spare = int(re.findall(r"worker (\d+) started as a spare", srv.log())[-1])
        assert parent_of(spare) == zygote
        os.kill(spare, signal.SIGKILL)  # its end, with the signal, comes from the zygote's reaping
        assert wait_until(lambda: f"worker {spare} for client" in srv.log() and "signal SIGKILL" in srv.log(), 10)
        os.kill(zygote, signal.SIGKILL)
        assert wait_until(lambda: "the zygote is gone" in srv.log(), 10)
        ls(srv)
        ls(srv)
        newest = int(re.findall(r"worker (\d+) started", srv.log())[-1])
        assert alive(newest) and parent_of(newest) == srv.proc.pid  # a new process of smbdd's own
    finally:
        assert srv.stop() == 0
