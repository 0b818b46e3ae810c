"""smbclient (Samba's client) against smbdd: the same suite Samba itself passes in
test_samba_reference.py, at every dialect, with signing and encryption required."""
import pytest

from tests.peers.smbclient_suite import TestSmbclient  # noqa: F401  (collected here, against smbdd)

pytestmark = pytest.mark.peer


@pytest.fixture(scope="session")
def server_factory(smbdd_factory):
    return smbdd_factory
