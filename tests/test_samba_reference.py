"""The real-peer harness proven against Samba's smbd, the reference server.

The same suite (tests/peers/smbclient_suite.py) runs against smbdd in test_smbclient.py; a
failure here means the harness or the host is broken, not smbdd.
"""
import pytest

from tests.peers.smbclient_suite import TestSmbclient  # noqa: F401  (collected here)

pytest_plugins = ["tests.peers.fixtures"]


@pytest.fixture(scope="session")
def server_factory(samba_factory):
    return samba_factory
