"""SPNEGO with Kerberos (smbd.auth.kerberos) against a real MIT KDC on loopback (tests/kdc.py):
smbclient with `--use-kerberos=required` logs on with a ticket for cifs/smbdd.test and its
files land; the session is signed or sealed with the Kerberos session key. (smbprotocol's
Kerberos needs pyspnego's `krb5` binding, which Debian does not package.) A ticket from another realm (a key the keytab does not hold), a user the
server does not know and an unreadable keytab are refused with a clear line; NTLM goes on
beside Kerberos."""
from __future__ import annotations

import subprocess

import pytest

from smbd.auth import kerberos
from tests import kdc as mitkdc
from tests.smbdd_process import PASSWORD, SMBDD, USER, Smbdd

pytestmark = pytest.mark.skipif(not (mitkdc.available() and kerberos.available()),
                                reason="needs krb5-kdc, krb5-admin-server, krb5-user and python3-gssapi")

SERVICE = f"cifs/{mitkdc.HOST}"


@pytest.fixture(scope="module")
def realm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realm")
    kdc = mitkdc.MitKdc(folder / "kdc").start()
    try:
        kdc.add_user(USER, "Alice-krb-pw1")
        kdc.add_user("mallory", "Mallory-krb-pw1")  # in the realm, not a user of the server
        kdc.add_service(SERVICE, folder / "server.keytab")
        yield kdc, folder / "server.keytab"
    finally:
        kdc.stop()


@pytest.fixture(scope="module")
def other_realm(tmp_path_factory):
    """Another realm with its own cifs/localhost: its tickets are sealed with a key the
    server's keytab does not hold."""
    folder = tmp_path_factory.mktemp("other")
    kdc = mitkdc.MitKdc(folder / "kdc", realm="OTHER.TEST").start()
    try:
        kdc.add_user(USER, "Alice-other-pw1")
        kdc.add_service(SERVICE, folder / "other.keytab")
        yield kdc
    finally:
        kdc.stop()


@pytest.fixture
def server(tmp_path, realm):
    kdc, keytab = realm
    srv = Smbdd(tmp_path, "--keytab", str(keytab), env=kdc.env)
    yield srv
    srv.stop()


def smbclient(srv: Smbdd, env: dict, *args: str, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["smbclient", f"//{mitkdc.HOST}/data", "-I", "127.0.0.1", "-p", str(srv.port),
                           "-m", "SMB3", *args,
                           "-c", command], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("protection", ["sign", "encrypt"])
def test_smbclient_logs_on_with_a_ticket_and_its_session_key_protects_the_session(
        server, realm, tmp_path, protection):
    kdc, _ = realm
    env = kdc.kinit(USER, "Alice-krb-pw1", tmp_path / "ccache")
    source = tmp_path / "hello.txt"
    source.write_text(f"over Kerberos, {protection}ed\n")
    done = smbclient(server, env, "--use-kerberos=required", f"--client-protection={protection}",
                     command=f"put {source} hello.txt; ls")
    assert done.returncode == 0, done.stdout + done.stderr + server.log()[-2000:]
    assert "hello.txt" in done.stdout
    assert (server.share / "hello.txt").read_text() == f"over Kerberos, {protection}ed\n"
    assert f"for {mitkdc.REALM}\\{USER}" in server.log()  # the principal's realm is its domain
    klist = subprocess.run(["klist"], env=env, capture_output=True, text=True, timeout=30).stdout
    assert f"{SERVICE}@{mitkdc.REALM}" in klist  # the client really asked the KDC for our service


def test_a_ticket_of_another_realm_is_refused(server, other_realm, tmp_path):
    env = other_realm.kinit(USER, "Alice-other-pw1", tmp_path / "ccache")
    done = smbclient(server, env, "--use-kerberos=required", command="ls")
    assert done.returncode != 0
    assert "NT_STATUS_LOGON_FAILURE" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "logon failed: Kerberos" in server.log()


def test_a_principal_the_server_does_not_know_is_refused(server, realm, tmp_path):
    kdc, _ = realm
    env = kdc.kinit("mallory", "Mallory-krb-pw1", tmp_path / "ccache")
    done = smbclient(server, env, "--use-kerberos=required", command="ls")
    assert "NT_STATUS_LOGON_FAILURE" in done.stdout + done.stderr, done.stdout + done.stderr
    assert "no user 'mallory' here" in server.log()


def test_ntlm_goes_on_beside_kerberos(server, realm, tmp_path):
    kdc, _ = realm
    done = smbclient(server, dict(kdc.env, KRB5CCNAME=f"FILE:{tmp_path / 'none'}"), "--use-kerberos=off",
                     "-U", f"{USER}%{PASSWORD}", command="ls")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"for {mitkdc.REALM}" not in server.log()  # an NTLM logon, not a Kerberos one


def test_a_keytab_that_is_not_one_stops_the_start_with_its_reason(tmp_path):
    bad = tmp_path / "bad.keytab"
    bad.write_bytes(b"\x05\x02 not a keytab")
    done = subprocess.run([*SMBDD, "--share",
                           f"data={tmp_path}", "--user", "a:b", "--keytab", str(bad), "--port", "1", "--no-rdma"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "keytab" in done.stderr and str(bad) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
