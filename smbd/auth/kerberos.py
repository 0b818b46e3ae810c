"""The Kerberos mechanism of SPNEGO for SESSION_SETUP: an RFC 4121 (krb5 GSS-API) acceptor with
the server's keytab, through MIT's libgssapi (the ``gssapi`` binding, Debian's python3-gssapi).

The client sends an AP-REQ inside SPNEGO's mechToken; the acceptor decrypts its ticket with the
service key from the keytab (any service principal the keytab holds: cifs/HOST for each name
clients use) and answers with the AP-REP. What SMB takes from the context ([MS-SMB2] 3.3.5.5.3):

- the session key, which MIT exports as GSS_C_INQ_SSPI_SESSION_KEY: the acceptor's subkey, else
  the initiator's, else the ticket's session key, the key Windows' SSPI gives SMB too. Signing
  keys use its first 16 bytes, AES-256 ciphers all of it (smbd.crypto.keys);
- the client principal ``user@REALM``: the user is the SMB user name, the realm its domain. Only
  principals of the service's own realm are taken, as Samba takes them on a member server
  without trusts; the user must be known here (an smbdd account or a Unix account);
- GSS_GetMIC / GSS_VerifyMIC for SPNEGO's mechListMIC.

A keytab that cannot be read or a ticket that does not decrypt (another key, another service,
expired) is a logon failure with the GSS-API's reason in the log, never a crash.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import logon_failure

log = logging.getLogger("smbd.auth.kerberos")

# 1.2.840.113554.1.2.2.5.5: GSS_C_INQ_SSPI_SESSION_KEY (MIT krb5 gssapi_krb5.h).
INQ_SSPI_SESSION_KEY = "1.2.840.113554.1.2.2.5.5"


def available() -> bool:
    """Whether the GSS-API binding can be imported here."""
    try:
        import gssapi  # noqa: F401
    except ImportError:
        return False
    return True


def check_keytab(path: str) -> str:
    """The keytab's absolute path if an acceptor can take credentials from it; else
    ValueError saying why (for the configuration check: the server must not start on a
    keytab that would refuse every Kerberos logon)."""
    if not available():
        raise ValueError(f"keytab {path}: Kerberos needs the gssapi module (Debian's python3-gssapi)")
    import gssapi
    from gssapi.raw.misc import GSSError

    if not os.path.isfile(path):
        raise ValueError(f"keytab {path}: no such file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(f"keytab {path}: {e.strerror}") from None
    try:
        gssapi.Credentials(usage="accept", mechs=[gssapi.MechType.kerberos], store={"keytab": path})
    except GSSError as e:
        raise ValueError(f"keytab {path}: no usable key ({_reason(e)})") from None
    return os.path.abspath(path)


@dataclass
class KerberosResult:
    """A Kerberos logon, with what SpnegoServer and SESSION_SETUP read of an AuthResult."""

    user: str
    domain: str
    session_key: bytes = field(default=b"", repr=False)
    context: Any = field(default=None, repr=False, compare=False)
    is_guest: bool = False
    is_anonymous: bool = False
    ntlm_mic_present: bool = False

    @property
    def can_sign(self) -> bool:
        return self.context is not None

    def verify_mic(self, data: bytes, mic: bytes) -> bool:
        from gssapi.raw.misc import GSSError

        try:
            self.context.verify_signature(data, mic)
        except GSSError:
            return False
        return True

    def make_mic(self, data: bytes) -> bytes:
        return self.context.get_signature(data)


class KerberosAcceptor:
    """One acceptor context for one SESSION_SETUP exchange.

    ``step(token)`` returns the token to send back (the AP-REP); ``result`` is set once the
    context is complete. ``known_user(name)`` says whether a principal's user may log on."""

    def __init__(self, keytab: str, known_user: Callable[[str], bool]):
        self.keytab = keytab
        self.known_user = known_user
        self.result: KerberosResult | None = None
        self._ctx = None

    def step(self, token: bytes) -> bytes:
        import gssapi
        from gssapi.raw.misc import GSSError

        try:
            if self._ctx is None:
                creds = gssapi.Credentials(usage="accept", mechs=[gssapi.MechType.kerberos],
                                           store={"keytab": self.keytab})
                self._ctx = gssapi.SecurityContext(creds=creds, usage="accept")
            out = self._ctx.step(token) or b""
            # The binding keeps a failed step's error (and its KRB-ERROR token) and raises
            # it at the next look at the context: that look belongs in here too.
            complete = self._ctx.complete
        except GSSError as e:
            raise logon_failure(f"Kerberos: {_reason(e)}") from None
        if complete:
            self.result = self._finish()
        return out

    def _finish(self) -> KerberosResult:
        from gssapi.raw.misc import GSSError
        import gssapi.raw

        client = str(self._ctx.initiator_name)
        service = str(self._ctx.target_name) if self._ctx.target_name is not None else ""
        user, _, realm = client.rpartition("@")
        service_realm = service.rpartition("@")[2]
        if not user or not realm or "/" in user:
            raise logon_failure(f"Kerberos: principal {client!r} is not a user")
        if service_realm and realm.upper() != service_realm.upper():
            raise logon_failure(f"Kerberos: {client} is of realm {realm}, not {service_realm}")
        if not self.known_user(user):
            raise logon_failure(f"Kerberos: no user {user!r} here")
        try:
            keys = gssapi.raw.inquire_sec_context_by_oid(
                self._ctx, gssapi.OID.from_int_seq(INQ_SSPI_SESSION_KEY))
        except GSSError as e:
            raise logon_failure(f"Kerberos: no session key: {_reason(e)}") from None
        if not keys or not keys[0]:
            raise logon_failure("Kerberos: no session key")
        return KerberosResult(user=user, domain=realm.upper(), session_key=bytes(keys[0]), context=self._ctx)


def _reason(e: Exception) -> str:
    """The GSS-API's own words, the mechanism's (minor) part when there is one."""
    try:
        text = e.gen_message() if hasattr(e, "gen_message") else str(e)
    except Exception:  # a message that cannot be rendered must not hide the refusal
        return type(e).__name__
    minor = re.search(r"Minor \(\d+\): (.*)", text)
    return minor.group(1).strip() if minor else text


__all__ = ["KerberosAcceptor", "KerberosResult", "available"]
