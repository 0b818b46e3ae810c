"""Run Samba's smbclient against a :class:`ServerUnderTest` and interpret its output.

smbclient 4.17 exits 0 after `-c` even when a command in the list failed (only a failed
connection or logon gives a non-zero status), so success means: exit 0 *and* no
``NT_STATUS_`` in the output.  :func:`check` applies that rule.
"""
from __future__ import annotations

import re
import subprocess
from typing import Sequence

from .server_under_test import ServerUnderTest

PROTOCOLS = ("SMB2_02", "SMB2_10", "SMB3_00", "SMB3_02", "SMB3_11")
_NT_STATUS = re.compile(r"NT_STATUS_[A-Z0-9_]+")


class SmbclientFailed(AssertionError):
    """smbclient exited non-zero or reported an NT_STATUS error."""


def smbclient(server: ServerUnderTest, commands: Sequence[str], protocol: str = "SMB3_11",
              extra: Sequence[str] = (), *, password: str | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """`smbclient -s /dev/null //host/share -p PORT -U user%pass -m PROTO -c "a; b"`.

    *extra* goes before the service (e.g. ``["--client-protection=encrypt"]``).
    *password* overrides the server's (wrong-password tests).  Output is text; stderr is
    kept separate.
    """
    password = server.password if password is None else password
    argv = ["smbclient", "-s", "/dev/null", *extra, server.unc, "-p", str(server.port),
            "-U", f"{server.user}%{password}", "-m", protocol, "-c", "; ".join(commands)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def list_shares(server: ServerUnderTest, protocol: str = "SMB3_11",
                password: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
    """`smbclient -L //host -p PORT -U user%pass`: share enumeration over srvsvc RPC."""
    password = server.password if password is None else password
    argv = ["smbclient", "-s", "/dev/null", "-L", f"//{server.host}", "-p", str(server.port),
            "-U", f"{server.user}%{password}", "-m", protocol]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def nt_statuses(result: subprocess.CompletedProcess) -> list[str]:
    """Every NT_STATUS_* name smbclient printed, in order."""
    return _NT_STATUS.findall(result.stdout + result.stderr)


def check(result: subprocess.CompletedProcess) -> str:
    """Return stdout if smbclient succeeded; raise :class:`SmbclientFailed` otherwise."""
    errors = nt_statuses(result)
    if result.returncode != 0 or errors:
        raise SmbclientFailed(
            f"smbclient exit {result.returncode}, errors {errors}\n"
            f"command: {' '.join(result.args)}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}")
    return result.stdout


_LS_LINE = re.compile(r"^  (?P<name>.+?)\s+(?P<attrs>[A-Z]*)\s+(?P<size>\d+)\s+"
                      r"\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}$")


def parse_ls(stdout: str) -> dict[str, tuple[str, int]]:
    """Map name -> (attribute letters, size) from smbclient `ls` output lines such as
    ``  f64                                 A 67108864  Tue Nov 24 04:57:05 2026``."""
    entries = {}
    for line in stdout.splitlines():
        match = _LS_LINE.match(line)
        if match:
            entries[match["name"]] = (match["attrs"], int(match["size"]))
    return entries
