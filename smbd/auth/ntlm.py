"""NTLMv2 acceptor ([MS-NLMP] 3.2, server side): CHALLENGE out, AUTHENTICATE checked.

One :class:`NtlmServer` handles one authentication exchange (one SESSION_SETUP
sequence): it remembers the NEGOTIATE and CHALLENGE messages because the AUTHENTICATE
message's MIC covers all three.  Passwords never reach this module: ``lookup`` returns
the user's NT hash (MD4 of the UTF-16LE password, see :func:`nt_hash`).

Policy, as Samba applies it: NTLMv1 and LM-only responses are refused; an unknown user
becomes a guest only when ``allow_guest`` (Samba's "map to guest = bad user"); a known
user with a wrong password always fails; anonymous (empty user, empty responses) is
accepted only when ``allow_guest``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import AuthError, logon_failure, malformed
from .md4 import md4
from .ntlm_messages import (
    AV_FLAG_MIC_PRESENT,
    AuthenticateMessage,
    AvId,
    ChallengeMessage,
    NegotiateFlags as F,
    NegotiateMessage,
    Ntlmv2Response,
    NtlmFormatError,
    encode_av_pairs,
    encode_filetime,
    make_version,
)
from .ntlm_security import NtlmSessionSecurity
from .rc4 import rc4

__all__ = ["AuthError", "AuthResult", "NtlmServer", "nt_hash", "ntowfv2"]

# Flags we grant when the client asks for them ([MS-NLMP] 3.2.5.1.1: the server's
# CHALLENGE echoes the negotiated subset).
_ECHOED_FLAGS = (
    F.SIGN | F.SEAL | F.ALWAYS_SIGN | F.KEY_EXCH | F.NEGOTIATE_128 | F.NEGOTIATE_56
)
# Flags we always set: Unicode only, NTLM, a standalone server with target info,
# extended session security (the only session security implemented), and Version.
_MANDATORY_FLAGS = (
    F.UNICODE | F.NTLM | F.TARGET_INFO | F.TARGET_TYPE_SERVER | F.REQUEST_TARGET
    | F.EXTENDED_SESSIONSECURITY | F.VERSION
)
_SERVER_VERSION = make_version(10, 0, 17763)
_NTLMV1_RESPONSE_SIZE = 24


def nt_hash(password: str) -> bytes:
    """NTOWFv1: MD4 of the UTF-16LE password ([MS-NLMP] 3.3.1)."""
    return md4(password.encode("utf-16-le"))


def ntowfv2(nt_hash_value: bytes, user: str, domain: str) -> bytes:
    """NTOWFv2: HMAC_MD5(NT hash, UTF-16LE(Uppercase(user) || domain)) ([MS-NLMP] 3.3.2)."""
    return hmac.new(nt_hash_value, (user.upper() + domain).encode("utf-16-le"), hashlib.md5).digest()


def _hmac_md5(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.md5).digest()


@dataclass(frozen=True, slots=True)
class AuthResult:
    """Outcome of a successful NTLM authentication.

    ``session_key`` is the ExportedSessionKey (16 bytes) that SMB derives its keys from;
    it is b"" for guest and anonymous sessions, which therefore cannot sign.
    ``security`` is the NTLM session security context for SPNEGO's mechListMIC (None
    when there is no key).  ``ntlm_mic_present`` tells SPNEGO that the client protected
    the NTLM exchange with a MIC, which obliges it to send a mechListMIC too.
    """

    user: str
    domain: str
    session_key: bytes = field(default=b"", repr=False)
    is_guest: bool = False
    is_anonymous: bool = False
    workstation: str = ""
    flags: int = 0
    ntlm_mic_present: bool = False
    security: NtlmSessionSecurity | None = field(default=None, repr=False, compare=False)

    @property
    def anonymous(self) -> bool:
        return self.is_anonymous

    @property
    def can_sign(self) -> bool:
        """Whether SPNEGO can exchange mechListMICs: a key and NTLMSSP_NEGOTIATE_SIGN.

        Samba's NTLMSSP reports GENSEC_FEATURE_SIGN the same way; a client that did not
        negotiate SIGN (ntlm_auth's helper, for one) neither sends nor expects a MIC.
        """
        return self.security is not None and bool(self.flags & F.SIGN)

    def verify_mic(self, data: bytes, mic: bytes) -> bool:
        """Check the client's mechListMIC over ``data`` (client-to-server keys)."""
        return self.security is not None and self.security.verify_mic(data, mic)

    def make_mic(self, data: bytes) -> bytes:
        """Our mechListMIC over ``data`` (server-to-client keys)."""
        if self.security is None:
            raise ValueError("no NTLM session key: guest/anonymous sessions cannot sign")
        return self.security.make_mic(data)


class NtlmServer:
    """The accepting side of one NTLMv2 exchange.

    ``lookup(user, domain)`` returns the NT hash of that account or None when it does
    not exist (it compares names case-insensitively itself).  ``rng`` and ``clock`` are
    injectable so tests can pin the server challenge and timestamp.
    """

    def __init__(
        self,
        lookup: Callable[[str, str], bytes | None],
        *,
        netbios_name: str,
        domain: str,
        dns_name: str = "",
        allow_guest: bool = False,
        allow_anonymous: bool | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ):
        self._lookup = lookup
        self.netbios_name = netbios_name.upper()
        self.domain = domain.upper()
        self.dns_name = (dns_name or netbios_name).lower()
        self.allow_guest = allow_guest
        # Anonymous (null) logons, which Samba accepts by default (restrict anonymous = 0)
        # and only reach IPC$ and guest shares; unless told, they follow allow_guest.
        self.allow_anonymous = allow_guest if allow_anonymous is None else allow_anonymous
        self._rng = rng
        self._clock = clock
        self._negotiate: NegotiateMessage | None = None
        self._challenge: bytes | None = None
        self._server_challenge = b""
        self._flags = 0
        self.result: AuthResult | None = None

    # --- CHALLENGE ----------------------------------------------------------------------

    def _target_info(self) -> bytes:
        dns_domain = self.dns_name.split(".", 1)[1] if "." in self.dns_name else self.dns_name
        return encode_av_pairs(
            [
                (AvId.NB_DOMAIN_NAME, self.domain.encode("utf-16-le")),
                (AvId.NB_COMPUTER_NAME, self.netbios_name.encode("utf-16-le")),
                (AvId.DNS_DOMAIN_NAME, dns_domain.encode("utf-16-le")),
                (AvId.DNS_COMPUTER_NAME, self.dns_name.encode("utf-16-le")),
                (AvId.TIMESTAMP, encode_filetime(self._clock())),
            ]
        )

    def challenge(self, negotiate_msg: bytes) -> bytes:
        """Answer a NEGOTIATE_MESSAGE with a CHALLENGE_MESSAGE ([MS-NLMP] 3.2.5.1.1).

        Starts a new exchange (any earlier state is dropped).  Raises AuthError
        (INVALID_PARAMETER) if ``negotiate_msg`` is not a NEGOTIATE_MESSAGE.
        """
        try:
            negotiate = NegotiateMessage.parse(negotiate_msg)
        except NtlmFormatError as exc:
            raise malformed(f"bad NTLM NEGOTIATE: {exc}") from None
        server_challenge = bytes(self._rng(8))
        if len(server_challenge) != 8:
            raise ValueError("rng must return the number of bytes asked for")
        flags = (negotiate.flags & _ECHOED_FLAGS) | _MANDATORY_FLAGS
        message = ChallengeMessage(
            flags=flags,
            server_challenge=server_challenge,
            target_name=self.netbios_name.encode("utf-16-le"),
            target_info=self._target_info(),
            version=_SERVER_VERSION,
        ).to_bytes()
        self._negotiate = negotiate
        self._challenge = message
        self._server_challenge = server_challenge
        self._flags = flags
        self.result = None
        return message

    # --- AUTHENTICATE -------------------------------------------------------------------

    def authenticate(self, auth_msg: bytes) -> AuthResult:
        """Verify an AUTHENTICATE_MESSAGE ([MS-NLMP] 3.2.5.1.2, 3.3.2).

        Returns the AuthResult (also kept as ``self.result``); raises AuthError with
        LOGON_FAILURE when the credentials are refused, INVALID_PARAMETER on garbage or
        when no CHALLENGE was sent first.
        """
        if self._challenge is None or self._negotiate is None:
            raise malformed("NTLM AUTHENTICATE before CHALLENGE")
        if self.result is not None:
            raise malformed("NTLM exchange already completed")
        try:
            auth = AuthenticateMessage.parse(auth_msg)
        except NtlmFormatError as exc:
            raise malformed(f"bad NTLM AUTHENTICATE: {exc}") from None

        if self._is_anonymous(auth):
            if not self.allow_anonymous:
                raise logon_failure("anonymous logon refused")
            return self._finish(AuthResult(user="", domain="", is_anonymous=True, workstation=auth.workstation,
                                           flags=auth.flags))

        if len(auth.nt_response) <= _NTLMV1_RESPONSE_SIZE:
            # 24 bytes is NTLMv1 (or NTLM2 session response); empty is LM-only.
            raise logon_failure("NTLMv1/LM authentication refused")
        try:
            response = Ntlmv2Response.parse(auth.nt_response)
        except NtlmFormatError as exc:
            raise malformed(f"bad NTLMv2 response: {exc}") from None

        stored_hash = self._lookup(auth.user, auth.domain)
        if stored_hash is None:
            if not self.allow_guest:
                raise logon_failure(f"unknown user {auth.user!r}")
            return self._finish(AuthResult(user=auth.user, domain=auth.domain, is_guest=True,
                                           workstation=auth.workstation, flags=auth.flags))

        response_key = self._match_ntlmv2(stored_hash, auth, response)
        if response_key is None:
            raise logon_failure(f"wrong password for {auth.user!r}")

        # [MS-NLMP] 3.3.2: SessionBaseKey; for NTLMv2 KeyExchangeKey is SessionBaseKey.
        key_exchange_key = _hmac_md5(response_key, response.nt_proof_str)
        flags = auth.flags & (self._flags | F.ANONYMOUS)
        exported_session_key = self._exported_session_key(auth, flags, key_exchange_key)

        mic_present = bool(response.av_flags & AV_FLAG_MIC_PRESENT)
        if mic_present:
            self._check_mic(auth, exported_session_key)

        security = None
        if flags & F.EXTENDED_SESSIONSECURITY:
            security = NtlmSessionSecurity(exported_session_key, flags, acceptor=True)
        return self._finish(
            AuthResult(
                user=auth.user,
                domain=auth.domain,
                session_key=exported_session_key,
                workstation=auth.workstation,
                flags=flags,
                ntlm_mic_present=mic_present,
                security=security,
            )
        )

    # --- helpers ------------------------------------------------------------------------

    @staticmethod
    def _is_anonymous(auth: AuthenticateMessage) -> bool:
        # [MS-NLMP] 3.2.5.1.2: empty user and NT response, LM response empty or one zero byte.
        return auth.user == "" and auth.nt_response == b"" and auth.lm_response in (b"", b"\x00")

    def _candidate_domains(self, client_domain: str) -> list[str]:
        """Domains to try in NTOWFv2: the client's, then as Samba does, upper-cased, ours, none."""
        candidates: list[str] = []
        for domain in (client_domain, client_domain.upper(), self.domain, ""):
            if domain not in candidates:
                candidates.append(domain)
        return candidates

    def _match_ntlmv2(self, stored_hash: bytes, auth: AuthenticateMessage, response: Ntlmv2Response) -> bytes | None:
        """Return ResponseKeyNT (NTOWFv2) if NTProofStr verifies for some candidate domain."""
        for domain in self._candidate_domains(auth.domain):
            response_key = ntowfv2(stored_hash, auth.user, domain)
            proof = _hmac_md5(response_key, self._server_challenge + response.blob)
            if hmac.compare_digest(proof, response.nt_proof_str):
                return response_key
        return None

    @staticmethod
    def _exported_session_key(auth: AuthenticateMessage, flags: int, key_exchange_key: bytes) -> bytes:
        """[MS-NLMP] 3.3.5.2: RC4(KeyExchangeKey, EncryptedRandomSessionKey) with KEY_EXCH."""
        encrypted = auth.encrypted_random_session_key
        if flags & F.KEY_EXCH and encrypted:
            if len(encrypted) != 16:
                raise malformed("EncryptedRandomSessionKey must be 16 bytes")
            return rc4(key_exchange_key, encrypted)
        if flags & F.KEY_EXCH and flags & (F.SIGN | F.SEAL):
            raise malformed("KEY_EXCH negotiated without an EncryptedRandomSessionKey")
        return key_exchange_key

    def _check_mic(self, auth: AuthenticateMessage, exported_session_key: bytes) -> None:
        """[MS-NLMP] 3.2.5.1.2: MIC = HMAC_MD5(ExportedSessionKey, NEGOTIATE||CHALLENGE||AUTHENTICATE)."""
        if auth.mic is None:
            raise logon_failure("MsvAvFlags announces a MIC but the message has no room for one")
        expected = _hmac_md5(exported_session_key, self._negotiate.raw + self._challenge + auth.with_zeroed_mic())
        if not hmac.compare_digest(expected, auth.mic):
            raise logon_failure("NTLM MIC does not verify")

    def _finish(self, result: AuthResult) -> AuthResult:
        self.result = result
        return result

