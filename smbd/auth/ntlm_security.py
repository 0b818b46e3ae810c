"""NTLM session security with extended session security ([MS-NLMP] 3.4).

SMB only needs it for SPNEGO's mechListMIC (GSS_GetMIC over the DER mechTypes list),
but sealing is included because the spec's only test vector for these keys
([MS-NLMP] 4.2.4.4) is a GSS_WrapEx, and the RC4 handle is shared between the two:
every signature and sealed message advances the same per-direction key stream.

- SIGNKEY ([MS-NLMP] 3.4.5.2): MD5(ExportedSessionKey || magic constant incl. NUL).
- SEALKEY ([MS-NLMP] 3.4.5.3): the session key cut to 16/7/5 bytes for 128/56/40-bit,
  then MD5(key || magic constant incl. NUL).
- MAC ([MS-NLMP] 3.4.4.2): Version=1, Checksum = HMAC_MD5(SigningKey, SeqNum || data)[:8],
  RC4-encrypted with the sealing handle when KEY_EXCH was negotiated, SeqNum.
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from .ntlm_messages import NegotiateFlags
from .rc4 import Rc4

_CLIENT_SIGN_MAGIC = b"session key to client-to-server signing key magic constant\x00"
_SERVER_SIGN_MAGIC = b"session key to server-to-client signing key magic constant\x00"
_CLIENT_SEAL_MAGIC = b"session key to client-to-server sealing key magic constant\x00"
_SERVER_SEAL_MAGIC = b"session key to server-to-client sealing key magic constant\x00"

SIGNATURE_SIZE = 16
_SIGNATURE = struct.Struct("<I8sI")  # Version, Checksum, SeqNum ([MS-NLMP] 2.2.2.9.1)
_SEQ = struct.Struct("<I")
_SIGNATURE_VERSION = 1


def sign_key(exported_session_key: bytes, client_to_server: bool) -> bytes:
    magic = _CLIENT_SIGN_MAGIC if client_to_server else _SERVER_SIGN_MAGIC
    return hashlib.md5(exported_session_key + magic).digest()


def seal_key(exported_session_key: bytes, flags: int, client_to_server: bool) -> bytes:
    if flags & NegotiateFlags.NEGOTIATE_128:
        key = exported_session_key
    elif flags & NegotiateFlags.NEGOTIATE_56:
        key = exported_session_key[:7]
    else:
        key = exported_session_key[:5]
    magic = _CLIENT_SEAL_MAGIC if client_to_server else _SERVER_SEAL_MAGIC
    return hashlib.md5(key + magic).digest()


class _Direction:
    """Signing key, sealing RC4 handle and sequence number of one direction."""

    __slots__ = ("signing_key", "sealing_key", "handle", "seq_num")

    def __init__(self, exported_session_key: bytes, flags: int, client_to_server: bool):
        self.signing_key = sign_key(exported_session_key, client_to_server)
        self.sealing_key = seal_key(exported_session_key, flags, client_to_server)
        self.handle = Rc4(self.sealing_key)
        self.seq_num = 0


class NtlmSessionSecurity:
    """Sign/verify/seal/unseal for an NTLMv2 session with extended session security.

    Built by the acceptor (server): messages it produces use the server-to-client keys,
    messages it checks use the client-to-server keys.  ``acceptor=False`` builds the
    initiator's view (used by tests and by anything that must play the client).
    """

    def __init__(self, exported_session_key: bytes, flags: int, *, acceptor: bool = True):
        if len(exported_session_key) != 16:
            raise ValueError("NTLM session security needs a 16-byte exported session key")
        self.flags = flags
        self._key_exch = bool(flags & NegotiateFlags.KEY_EXCH)
        client = _Direction(exported_session_key, flags, client_to_server=True)
        server = _Direction(exported_session_key, flags, client_to_server=False)
        self._outgoing, self._incoming = (server, client) if acceptor else (client, server)

    # --- MAC ([MS-NLMP] 3.4.4.2) ----------------------------------------------------------

    def _mac(self, direction: _Direction, data: bytes) -> bytes:
        seq = _SEQ.pack(direction.seq_num)
        checksum = hmac.new(direction.signing_key, seq + data, hashlib.md5).digest()[:8]
        if self._key_exch:
            checksum = direction.handle.update(checksum)
        signature = _SIGNATURE.pack(_SIGNATURE_VERSION, checksum, direction.seq_num)
        direction.seq_num += 1
        return signature

    def make_mic(self, data: bytes) -> bytes:
        """GSS_GetMIC for a message we send (server-to-client keys)."""
        return self._mac(self._outgoing, bytes(data))

    def verify_mic(self, data: bytes, mic: bytes) -> bool:
        """GSS_VerifyMIC of a peer's signature over ``data`` (constant-time compare)."""
        expected = self._mac(self._incoming, bytes(data))
        return len(mic) == SIGNATURE_SIZE and hmac.compare_digest(expected, bytes(mic))

    # --- Sealing ([MS-NLMP] 3.4.3), for completeness and the spec vector ------------------

    def seal(self, data: bytes) -> tuple[bytes, bytes]:
        """GSS_WrapEx of a message we send: (encrypted data, signature)."""
        sealed = self._outgoing.handle.update(bytes(data))
        return sealed, self._mac(self._outgoing, bytes(data))

    def unseal(self, sealed: bytes, signature: bytes) -> bytes | None:
        """GSS_UnwrapEx of a peer's message: the plaintext, or None if the signature fails."""
        data = self._incoming.handle.update(bytes(sealed))
        if not hmac.compare_digest(self._mac(self._incoming, data), bytes(signature)):
            return None
        return data
