"""A real MIT Kerberos KDC (Debian's krb5-kdc) for the tests, on a free loopback port.

``MitKdc(folder).start()`` makes a realm in ``folder`` (its database, kdc.conf, krb5.conf),
adds principals with kadmin.local, exports keytabs and runs krb5kdc in the foreground until
``stop()``. ``env`` is what a process needs to use that realm (KRB5_CONFIG, no DNS), for the
server and the clients alike; ``kinit`` gets a user's ticket into a ccache of its own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.peers.ports import free_tcp_port as free_port

REALM = "SMBDD.TEST"
# The server's name in the tests: clients ask the KDC for cifs/HOST. Not "localhost" and not
# an address: smbclient never tries Kerberos for those. Clients reach it on 127.0.0.1
# (smbclient -I).
HOST = "smbdd.test"
MASTER_PASSWORD = "kdc-master-Secret1"


def available() -> bool:
    return all(shutil.which(tool) or Path("/usr/sbin", tool).exists()
               for tool in ("krb5kdc", "kdb5_util", "kadmin.local", "kinit"))


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class MitKdc:
    def __init__(self, folder: Path, realm: str = REALM):
        self.folder = folder
        self.realm = realm
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.krb5_conf = folder / "krb5.conf"
        self.kdc_conf = folder / "kdc.conf"
        self.env = dict(os.environ, KRB5_CONFIG=str(self.krb5_conf), KRB5_KDC_PROFILE=str(self.kdc_conf),
                        KRB5RCACHEDIR=str(folder))

    def start(self) -> "MitKdc":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.krb5_conf.write_text(f"""[libdefaults]
    default_realm = {self.realm}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    dns_canonicalize_hostname = false
    rdns = false
    udp_preference_limit = 1
[realms]
    {self.realm} = {{
        kdc = 127.0.0.1:{self.port}
    }}
[domain_realm]
    {HOST} = {self.realm}
""")
        self.kdc_conf.write_text(f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}
[realms]
    {self.realm} = {{
        database_name = {self.folder / "principal"}
        key_stash_file = {self.folder / "stash"}
        acl_file = {self.folder / "kadm5.acl"}
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}
[logging]
    kdc = FILE:{self.folder / "kdc.log"}
""")
        self._run(_tool("kdb5_util"), "create", "-s", "-r", self.realm, "-P", MASTER_PASSWORD)
        self.proc = subprocess.Popen([_tool("krb5kdc"), "-n", "-r", self.realm], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        import socket

        end = time.monotonic() + 30
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited: {self.proc.stderr.read().decode(errors='replace')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("krb5kdc did not listen")

    def _run(self, *argv: str) -> str:
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stdout}{done.stderr}")
        return done.stdout

    def kadmin(self, query: str) -> str:
        return self._run(_tool("kadmin.local"), "-r", self.realm, "-q", query)

    def add_user(self, name: str, password: str) -> None:
        self.kadmin(f"addprinc -pw {password} {name}")

    def add_service(self, principal: str, keytab: Path) -> None:
        """A service principal with a random key, exported to ``keytab``."""
        self.kadmin(f"addprinc -randkey {principal}")
        self.kadmin(f"ktadd -k {keytab} {principal}")

    def kinit(self, user: str, password: str, ccache: Path) -> dict:
        """A ticket-granting ticket for ``user`` in ``ccache``; the environment that uses it."""
        env = dict(self.env, KRB5CCNAME=f"FILE:{ccache}")
        done = subprocess.run([_tool("kinit"), user], input=password + "\n", env=env,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"kinit {user}: {done.stdout}{done.stderr}")
        return env

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
