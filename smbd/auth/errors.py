"""The error every authentication step raises."""
from __future__ import annotations

from ..status import NtStatus, SmbError


class AuthError(SmbError):
    """Authentication failed; ``status`` is what SESSION_SETUP answers.

    - STATUS_LOGON_FAILURE: wrong password, unknown user without guest, refused
      NTLMv1/LM, bad MIC;
    - STATUS_INVALID_PARAMETER: the token is not well-formed NTLMSSP/SPNEGO or arrives
      out of sequence.
    """

    def __init__(self, status: int = NtStatus.LOGON_FAILURE, message: str = ""):
        super().__init__(status, message)


def malformed(message: str) -> AuthError:
    """A garbage token: STATUS_INVALID_PARAMETER."""
    return AuthError(NtStatus.INVALID_PARAMETER, message)


def logon_failure(message: str) -> AuthError:
    return AuthError(NtStatus.LOGON_FAILURE, message)
