"""Authentication for SESSION_SETUP: NTLMv2 ([MS-NLMP]) inside SPNEGO ([RFC 4178], [MS-SPNG]).

Typical use by the SMB2 core::

    negotiate_response.security_buffer = initial_token()
    ...
    spnego = SpnegoServer(NtlmServer(lookup, netbios_name="SMBDD", domain="WORKGROUP"))
    token, state = spnego.step(session_setup.security_buffer)   # may raise AuthError
    if state is StepResult.DONE:
        keys = derive_session_keys(dialect, spnego.result.session_key, preauth, cipher)
"""
from .errors import AuthError
from .ntlm import AuthResult, NtlmServer, nt_hash
from .spnego import SpnegoServer, StepResult, initial_token

__all__ = ["AuthError", "AuthResult", "NtlmServer", "SpnegoServer", "StepResult", "initial_token", "nt_hash"]
