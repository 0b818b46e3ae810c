"""pytest fixtures for real-peer tests; register with ``pytest_plugins = ["tests.peers.fixtures"]``.

Fixtures (all session-scoped, servers are started once per security profile and reused):

- ``peer_workdir``: a 0755 folder under /tmp for server state and shares (pytest's tmp_path
  is 0700, which Samba's unprivileged Unix user cannot enter).
- ``payload_64mib``, ``payload_8mib``: random files with their size and SHA-256.
- ``samba_factory`` / ``samba_server``: private Samba smbd instances.
- ``smbdd_factory`` / ``smbdd_server``: the server under test, started from its command line
  (``$SMBDD_COMMAND`` if set, else the ``smbdd`` console script).

A factory is called with a :class:`SecurityProfile` and returns a started server.
Suites that work with any server take a ``server_factory`` fixture, which the test module
defines as one of the two factories.
"""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from .files import make_random_file, world_traversable_dir
from .ports import free_tcp_port
from .samba_server import DEFAULT_PASSWORD, DEFAULT_USER, SambaServer, samba_available
from .server_under_test import (DEFAULT_PROFILE, CommandServer, SecurityProfile,
                                ServerUnderTest, smbdd_argv)

KEEP_DIRS_ENV = "SMBDD_KEEP_PEER_DIRS"


class ProfileNotSupported(NotImplementedError):
    """The server cannot be configured for this SecurityProfile (tests using it skip)."""


@dataclass(frozen=True, slots=True)
class PayloadFile:
    path: Path
    size: int
    sha256: str


class ServerFactory:
    """Starts one server per :class:`SecurityProfile` on first use and stops them all at the
    end.  *build(profile, workdir)* makes an unstarted server."""

    def __init__(self, build: Callable[[SecurityProfile, Path], ServerUnderTest],
                 workdir: Path, label: str):
        self._build = build
        self._workdir = workdir
        self._label = label
        self._servers: dict[SecurityProfile, ServerUnderTest] = {}

    def __call__(self, profile: SecurityProfile = DEFAULT_PROFILE) -> ServerUnderTest:
        server = self._servers.get(profile)
        if server is None:
            workdir = world_traversable_dir(self._workdir / f"{self._label}-{profile.label}")
            try:
                server = self._build(profile, workdir)
            except ProfileNotSupported as exc:
                pytest.skip(str(exc))
            server.start()
            self._servers[profile] = server
        return server

    def stop_all(self) -> None:
        while self._servers:
            _, server = self._servers.popitem()
            server.stop()


def find_smbdd_command() -> list[str] | None:
    """``$SMBDD_COMMAND`` (shell words), else ``smbdd`` next to this Python, else on PATH."""
    if os.environ.get("SMBDD_COMMAND"):
        return shlex.split(os.environ["SMBDD_COMMAND"])
    beside_python = Path(sys.executable).with_name("smbdd")
    if beside_python.exists():
        return [str(beside_python)]
    found = shutil.which("smbdd")
    return [found] if found else None


def build_smbdd_server(command: list[str], profile: SecurityProfile,
                       workdir: Path, extra: tuple[str, ...] = ()) -> CommandServer:
    """A :class:`CommandServer` running smbdd with the agreed command line."""
    host = "127.0.0.1"
    port = free_tcp_port(host)
    share_path = world_traversable_dir(workdir / "share")
    argv = smbdd_argv(share_name="share", share_path=share_path, user=DEFAULT_USER,
                      password=DEFAULT_PASSWORD, host=host, port=port, profile=profile,
                      executable=command[0], extra=extra)
    argv[1:1] = command[1:]  # e.g. SMBDD_COMMAND="python -m smbdd.cli"
    return CommandServer(argv, log_path=workdir / "smbdd.log", host=host, port=port,
                         share_name="share", share_path=share_path, user=DEFAULT_USER,
                         password=DEFAULT_PASSWORD, profile=profile)


@pytest.fixture(scope="session")
def peer_workdir():
    base = Path(tempfile.mkdtemp(prefix="smbdd-peers-"))
    world_traversable_dir(base)
    yield base
    if not os.environ.get(KEEP_DIRS_ENV):
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def payload_64mib(peer_workdir) -> PayloadFile:
    path = peer_workdir / "payload-64mib.bin"
    size = 64 * 1024 * 1024
    return PayloadFile(path, size, make_random_file(path, size))


@pytest.fixture(scope="session")
def payload_8mib(peer_workdir) -> PayloadFile:
    """Smaller payload for signed/sealed variants: still many multi-credit READs/WRITEs."""
    path = peer_workdir / "payload-8mib.bin"
    size = 8 * 1024 * 1024
    return PayloadFile(path, size, make_random_file(path, size))


@pytest.fixture(scope="session")
def samba_factory(peer_workdir):
    if not samba_available():
        pytest.skip("Samba's smbd is not installed (deploy/install-deps.sh)")
    if os.geteuid() != 0:
        pytest.skip("a private Samba needs root (Unix account for its user, setuid to it)")
    factory = ServerFactory(lambda profile, workdir: SambaServer(workdir, profile=profile),
                            peer_workdir, "samba")
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def samba_server(samba_factory) -> ServerUnderTest:
    return samba_factory(DEFAULT_PROFILE)


@pytest.fixture(scope="session")
def smbdd_factory(peer_workdir):
    command = find_smbdd_command()
    if command is None:
        pytest.skip("no smbdd command (install the project or set SMBDD_COMMAND)")
    factory = ServerFactory(lambda profile, workdir: build_smbdd_server(command, profile,
                                                                        workdir),
                            peer_workdir, "smbdd")
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def smbdd_server(smbdd_factory) -> ServerUnderTest:
    return smbdd_factory(DEFAULT_PROFILE)
