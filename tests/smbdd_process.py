"""Run the real `smbdd` command for a test: a free port, a log file, SIGTERM to stop."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.peers.ports import free_tcp_port, wait_for_port

SMBDD = [sys.executable, "-m", "smbdd.cli"]
USER, PASSWORD = "alice", "s3cret-pw"


class Smbdd:
    def __init__(self, tmp: Path, *extra: str, share: Path | None = None, user: bool = True,
                 env: dict | None = None):
        self.port = free_tcp_port()
        self.share = share or tmp / "share"
        self.share.mkdir(exist_ok=True)
        self.log_path = tmp / f"smbdd-{self.port}.log"
        args = [*SMBDD, "--share", f"data={self.share}", "--listen", "127.0.0.1", "--port", str(self.port),
                "--no-rdma", *extra]
        if "--unix-identity" not in extra:
            # Test users have no Unix accounts: their files are the server's, as before
            # accounts (tests/test_identity.py runs with "users").
            args += ["--unix-identity", "daemon"]
        if "--state-dir" not in extra:
            args += ["--state-dir", str(tmp / "state")]  # its own ServerGuid and persistent store
        if user:
            args += ["--user", f"{USER}:{PASSWORD}"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     cwd=Path(__file__).resolve().parent.parent)
        wait_for_port("127.0.0.1", self.port, 20, self.proc)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def worker_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"worker (\d+) serves client", self.log())]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def wait_until(cond, timeout: float = 10.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
