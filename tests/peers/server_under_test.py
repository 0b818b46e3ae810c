"""What a test needs to know about an SMB server, and a generic command-line server.

:class:`ServerUnderTest` is the one interface suites use: address, share, credentials, the
share's local path (to check results on disk), start/stop.  :class:`CommandServer` runs any
server as a subprocess (smbdd, or Samba's smbd via :mod:`tests.peers.samba_server`).
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from .ports import ServerDidNotStart, wait_for_port

Signing = Literal["auto", "mandatory"]
Encryption = Literal["off", "desired", "required"]


@dataclass(frozen=True, slots=True)
class SecurityProfile:
    """Server-side signing and encryption policy (MS-SMB2 3.3.1.5 RequireMessageSigning,
    3.3.1.5 EncryptData / RejectUnencryptedAccess)."""

    signing: Signing = "auto"
    encrypt: Encryption = "off"

    @property
    def label(self) -> str:
        return f"signing-{self.signing}_encrypt-{self.encrypt}"


DEFAULT_PROFILE = SecurityProfile()
SIGNING_REQUIRED = SecurityProfile(signing="mandatory")
ENCRYPTION_REQUIRED = SecurityProfile(encrypt="required")


class ServerUnderTest:
    """Base class: an SMB server reachable at host:port exporting one share.

    Subclasses implement :meth:`start` and :meth:`stop`.  Usable as a context manager.
    """

    name = "server"

    def __init__(self, *, host: str, port: int, share_name: str, share_path: Path,
                 user: str, password: str, profile: SecurityProfile = DEFAULT_PROFILE):
        self.host = host
        self.port = port
        self.share_name = share_name
        self.share_path = Path(share_path)
        self.user = user
        self.password = password
        self.profile = profile

    @property
    def unc(self) -> str:
        """//host/share, the form smbclient and smbtorture take."""
        return f"//{self.host}/{self.share_name}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.unc} port={self.port} "
                f"{self.profile.label}>")


class CommandServer(ServerUnderTest):
    """A server started as a subprocess from a command line.

    stdout and stderr go to *log_path*.  The process gets its own session (process group) so
    :meth:`stop` reaches the children a forking server creates: SIGTERM to the group, then
    SIGKILL after *stop_timeout*.
    """

    name = "command"

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: dict | None = None,
                 cwd: Path | None = None, start_timeout: float = 10.0,
                 stop_timeout: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError(f"{self!r} already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True)
        finally:
            log.close()  # the child holds its own copy of the descriptor
        try:
            self.startup_seconds = wait_for_port(self.host, self.port, self.start_timeout,
                                                 self.process)
        except ServerDidNotStart as exc:
            self.stop()
            raise ServerDidNotStart(f"{exc}; command: {' '.join(self.argv)}\n"
                                    f"log tail:\n{self.log_tail()}") from None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        self._signal_group(process, signal.SIGTERM)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(process, signal.SIGKILL)
            process.wait(self.stop_timeout)
        else:
            # The leader exited; children of a forking server may linger: kill what is left
            # of the group we created.
            self._signal_group(process, signal.SIGKILL)

    @staticmethod
    def _signal_group(process: subprocess.Popen, sig: int) -> None:
        # The group id is the leader's pid because of start_new_session=True.
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def smbdd_argv(*, share_name: str, share_path: Path, user: str, password: str, host: str,
               port: int, profile: SecurityProfile = DEFAULT_PROFILE,
               executable: str = "smbdd", config: Path | None = None,
               extra: Sequence[str] = ()) -> list[str]:
    """The smbdd command line for a profile. Samba's default ("off" here) still lets a client
    ask for encryption, which is smbdd's "auto"; smbdd's "off" would not offer it at all."""
    argv = [executable, "--share", f"{share_name}={share_path}",
            "--user", f"{user}:{password}", "--listen", host, "--port", str(port), "--no-rdma",
            "--encrypt", {"off": "auto"}.get(profile.encrypt, profile.encrypt),
            "--unix-identity", "daemon"]  # the test user has no Unix account
    if profile.signing == "mandatory":
        argv += ["--signing", "required"]
    if config is not None:
        argv += ["--config", str(config)]
    return argv + list(extra)
