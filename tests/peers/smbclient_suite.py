"""smbclient against any SMB server: the suite behind test_samba_reference.py and
test_smbclient.py.

Import it into a test module with ``from tests.peers.smbclient_suite import TestSmbclient``
and define a session fixture ``server_factory`` returning a
:class:`~tests.peers.fixtures.ServerFactory` (``samba_factory`` or ``smbdd_factory``).

Results are checked twice: through smbclient's own output and on the server's disk (the
share is a local folder), and the 64 MiB payload must come back byte-identical.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from .files import sha256_file
from .server_under_test import (DEFAULT_PROFILE, ENCRYPTION_REQUIRED, SIGNING_REQUIRED,
                                ServerUnderTest)
from .smb_probe import DIALECTS, probe_security
from .smbclient_runner import (PROTOCOLS, check, list_shares, nt_statuses, parse_ls,
                               smbclient)

SMB3_PROTOCOLS = tuple(p for p in PROTOCOLS if p.startswith("SMB3"))
SMB2_PROTOCOLS = tuple(p for p in PROTOCOLS if p.startswith("SMB2"))


def roundtrip(server: ServerUnderTest, protocol: str, local: Path, size: int, sha256: str,
              scratch: Path, extra: tuple[str, ...] = ()) -> None:
    """mkdir, put, ls, get, rename, rm, rmdir one file through smbclient, checking each step
    in smbclient's output and on the server's disk."""
    folder = f"rt-{protocol}-{uuid.uuid4().hex[:8]}"
    on_disk = server.share_path / folder

    out = check(smbclient(server, [f"mkdir {folder}", "ls", f"cd {folder}",
                                   f'put "{local}" data.bin', "ls"], protocol, extra))
    listing = parse_ls(out)
    assert "D" in listing[folder][0], out
    assert listing["data.bin"][1] == size, out
    assert sha256_file(on_disk / "data.bin") == sha256, "server stored different bytes"

    fetched = scratch / f"{folder}.bin"
    check(smbclient(server, [f'get {folder}\\data.bin "{fetched}"'], protocol, extra))
    assert fetched.stat().st_size == size
    assert sha256_file(fetched) == sha256, "client received different bytes"
    fetched.unlink()

    out = check(smbclient(server, [f"rename {folder}\\data.bin {folder}\\renamed.bin",
                                   f"ls {folder}\\*"], protocol, extra))
    names = set(parse_ls(out))
    assert "renamed.bin" in names and "data.bin" not in names, out
    assert (on_disk / "renamed.bin").is_file() and not (on_disk / "data.bin").exists()

    out = check(smbclient(server, [f"rm {folder}\\renamed.bin", f"rmdir {folder}", "ls"],
                          protocol, extra))
    assert folder not in parse_ls(out), out
    assert not on_disk.exists()


@pytest.mark.peer
class TestSmbclient:
    @pytest.fixture
    def server(self, server_factory) -> ServerUnderTest:
        return server_factory(DEFAULT_PROFILE)

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_file_roundtrip_64mib(self, server, protocol, payload_64mib, tmp_path):
        assert probe_security(server, protocol).dialect == DIALECTS[protocol]
        roundtrip(server, protocol, payload_64mib.path, payload_64mib.size,
                  payload_64mib.sha256, tmp_path)

    def test_list_shares(self, server):
        result = list_shares(server)
        assert result.returncode == 0, result.stdout + result.stderr
        disk_shares = [line.split()[0] for line in result.stdout.splitlines()
                       if line.split()[1:2] == ["Disk"]]
        assert server.share_name in disk_shares, result.stdout

    @pytest.mark.parametrize("protocol", ["SMB2_02", "SMB3_11"])
    def test_wrong_password_is_logon_failure(self, server, protocol):
        result = smbclient(server, ["ls"], protocol, password=server.password + "-wrong")
        assert result.returncode != 0
        assert "NT_STATUS_LOGON_FAILURE" in nt_statuses(result), result.stdout + result.stderr

    @pytest.mark.parametrize("protocol", ["SMB2_02", "SMB2_10", "SMB3_11"])
    def test_signing_required(self, server_factory, protocol, payload_8mib, tmp_path):
        server = server_factory(SIGNING_REQUIRED)
        assert probe_security(server, protocol).signing_required
        roundtrip(server, protocol, payload_8mib.path, payload_8mib.size,
                  payload_8mib.sha256, tmp_path)

    @pytest.mark.parametrize("protocol", SMB3_PROTOCOLS)
    def test_encryption_required(self, server_factory, protocol, payload_8mib, tmp_path):
        server = server_factory(ENCRYPTION_REQUIRED)
        assert probe_security(server, protocol).encrypted
        roundtrip(server, protocol, payload_8mib.path, payload_8mib.size,
                  payload_8mib.sha256, tmp_path)

    @pytest.mark.parametrize("protocol", SMB2_PROTOCOLS)
    def test_encryption_required_refuses_smb2(self, server_factory, protocol):
        # MS-SMB2 3.3.5.5.3 / 3.3.5.7: with EncryptData and RejectUnencryptedAccess, a 2.x
        # connection (which cannot encrypt) gets STATUS_ACCESS_DENIED.
        server = server_factory(ENCRYPTION_REQUIRED)
        result = smbclient(server, ["ls"], protocol)
        assert result.returncode != 0
        assert "NT_STATUS_ACCESS_DENIED" in nt_statuses(result), result.stdout + result.stderr

    def test_client_requested_encryption(self, server, payload_8mib, tmp_path):
        # The client asks for sealing on a server that does not require it (smbclient 4.17
        # has no -e; --client-protection=encrypt fails the connection if it cannot seal).
        roundtrip(server, "SMB3_11", payload_8mib.path, payload_8mib.size,
                  payload_8mib.sha256, tmp_path,
                  extra=("--client-protection=encrypt",))
