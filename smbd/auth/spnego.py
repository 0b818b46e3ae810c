"""SPNEGO acceptor for NTLMSSP and Kerberos ([RFC 4178], [MS-SPNG] 3.2.5), as Windows and Samba behave.

Tokens (RFC 4178 section 4.2)::

    InitialContextToken ::= [APPLICATION 0] { thisMech OID(1.3.6.1.5.5.2), NegotiationToken }
    NegotiationToken ::= CHOICE { negTokenInit [0] NegTokenInit, negTokenResp [1] NegTokenResp }
    NegTokenInit  ::= SEQUENCE { mechTypes [0] MechTypeList, reqFlags [1] ContextFlags OPTIONAL,
                                 mechToken [2] OCTET STRING OPTIONAL, mechListMIC [3] OCTET STRING OPTIONAL }
    NegTokenInit2 ::= ... negHints [3] NegHints, mechListMIC [4]     ([MS-SPNG] 2.2.1, server's hint)
    NegTokenResp  ::= SEQUENCE { negState [0] ENUMERATED OPTIONAL, supportedMech [1] OID OPTIONAL,
                                 responseToken [2] OCTET STRING OPTIONAL, mechListMIC [3] OCTET STRING OPTIONAL }

The exchange the server accepts:

1. negTokenInit listing NTLMSSP (first: with the NTLM NEGOTIATE as optimistic token ->
   accept-incomplete + CHALLENGE; not first, e.g. after Kerberos -> request-mic and no
   token, the client then sends the NTLM NEGOTIATE in a negTokenResp);
2. negTokenResp carrying AUTHENTICATE -> verify.  The mechListMIC (GSS_GetMIC over the
   DER MechTypeList the client sent) is checked when the client sends one and is
   required when the NTLM MIC was used or the mech was a downgrade; Samba's order is
   followed: when required but absent we answer accept-incomplete with our own
   mechListMIC and wait for the client's in one more negTokenResp;
3. accept-completed (with our mechListMIC when one is due).

With a keytab (smbd.auth.kerberos) the server also offers Kerberos, first, as Windows does.
A client whose first choice is Kerberos (either of its OIDs) sends the AP-REQ as optimistic
token; the AP-REP goes back with accept-completed, without a mechListMIC: the client's
preferred mechanism was chosen, so there was no downgrade to protect against (RFC 4178 5),
and Windows answers so too. A client that also sends one has it checked.

Raw NTLMSSP tokens (b"NTLMSSP\\0...") without SPNEGO are accepted too and answered raw.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import der
from .errors import AuthError, logon_failure, malformed
from .ntlm import AuthResult, NtlmServer
from .ntlm_messages import NTLMSSP_SIGNATURE

if TYPE_CHECKING:
    from .kerberos import KerberosAcceptor, KerberosResult

OID_SPNEGO = "1.3.6.1.5.5.2"
OID_NTLMSSP = "1.3.6.1.4.1.311.2.2.10"
OID_KERBEROS5 = "1.2.840.113554.1.2.2"
OID_MS_KERBEROS5 = "1.2.840.48018.1.2.2"
KERBEROS_OIDS = (OID_MS_KERBEROS5, OID_KERBEROS5)

# What Windows and Samba put in negHints.hintName ([MS-SPNG] 3.2.5.2).
HINT_NAME = b"not_defined_in_RFC4178@please_ignore"

_MAX_TOKEN_SIZE = 0xFFFF  # Samba refuses larger SPNEGO input too


class NegState(enum.IntEnum):
    """negState values (RFC 4178 4.2.2)."""

    ACCEPT_COMPLETED = 0
    ACCEPT_INCOMPLETE = 1
    REJECT = 2
    REQUEST_MIC = 3


class StepResult(enum.Enum):
    MORE_PROCESSING = "more_processing"  # send the token with STATUS_MORE_PROCESSING_REQUIRED
    DONE = "done"  # authenticated; send the token with STATUS_SUCCESS


# --- Token structures -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NegTokenInit:
    """NegTokenInit / NegTokenInit2 as a client sends it (RFC 4178 4.2.1, [MS-SPNG] 2.2.1).

    ``mech_types_der`` is the MechTypeList exactly as received: the mechListMIC covers it.
    """

    mech_types: tuple[str, ...]
    mech_types_der: bytes = field(repr=False)
    mech_token: bytes | None = field(default=None, repr=False)
    mech_list_mic: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse_content(cls, content: bytes) -> "NegTokenInit":
        sequence = der.read_single(content, der.TAG_SEQUENCE)
        mech_types: tuple[str, ...] | None = None
        mech_types_der = b""
        mech_token = None
        mech_list_mic = None
        for element in der.read_children(sequence.content):
            if element.tag == der.context_tag(0):
                mech_list = der.read_single(element.content, der.TAG_SEQUENCE)
                mech_types_der = mech_list.raw
                oids = der.read_children(mech_list.content)
                if any(oid.tag != der.TAG_OID for oid in oids):
                    raise der.DerError("MechTypeList holds a non-OID")
                mech_types = tuple(der.decode_oid(oid.content) for oid in oids)
            elif element.tag == der.context_tag(2):
                mech_token = der.read_single(element.content, der.TAG_OCTET_STRING).content
            elif element.tag in (der.context_tag(3), der.context_tag(4)):
                # [3] is mechListMIC in RFC 4178 but negHints in NegTokenInit2; tell by type.
                inner = der.read_single(element.content)
                if inner.tag == der.TAG_OCTET_STRING:
                    mech_list_mic = inner.content
            # reqFlags [1] and unknown extensions are ignored.
        if not mech_types:
            raise der.DerError("negTokenInit without mechTypes")
        return cls(mech_types, mech_types_der, mech_token, mech_list_mic)


@dataclass(frozen=True, slots=True)
class NegTokenResp:
    """NegTokenResp (RFC 4178 4.2.2), parsed from the client or built by us."""

    neg_state: NegState | None = None
    supported_mech: str | None = None
    response_token: bytes | None = field(default=None, repr=False)
    mech_list_mic: bytes | None = field(default=None, repr=False)

    @classmethod
    def parse_content(cls, content: bytes) -> "NegTokenResp":
        sequence = der.read_single(content, der.TAG_SEQUENCE)
        neg_state = supported_mech = response_token = mech_list_mic = None
        for element in der.read_children(sequence.content):
            if element.tag == der.context_tag(0):
                value = der.decode_enumerated(der.read_single(element.content, der.TAG_ENUMERATED).content)
                try:
                    neg_state = NegState(value)
                except ValueError:
                    raise der.DerError(f"unknown negState {value}") from None
            elif element.tag == der.context_tag(1):
                supported_mech = der.decode_oid(der.read_single(element.content, der.TAG_OID).content)
            elif element.tag == der.context_tag(2):
                response_token = der.read_single(element.content, der.TAG_OCTET_STRING).content
            elif element.tag == der.context_tag(3):
                mech_list_mic = der.read_single(element.content, der.TAG_OCTET_STRING).content
        return cls(neg_state, supported_mech, response_token, mech_list_mic)

    def to_bytes(self) -> bytes:
        parts = []
        if self.neg_state is not None:
            parts.append(der.encode(der.context_tag(0), der.encode(der.TAG_ENUMERATED, bytes([self.neg_state]))))
        if self.supported_mech is not None:
            parts.append(der.encode(der.context_tag(1), der.encode_oid(self.supported_mech)))
        if self.response_token is not None:
            parts.append(der.encode(der.context_tag(2), der.encode(der.TAG_OCTET_STRING, self.response_token)))
        if self.mech_list_mic is not None:
            parts.append(der.encode(der.context_tag(3), der.encode(der.TAG_OCTET_STRING, self.mech_list_mic)))
        return der.encode(der.context_tag(1), der.encode_sequence(*parts))


def parse_negotiation_token(token: bytes) -> NegTokenInit | NegTokenResp:
    """Parse a GSS-wrapped or bare NegotiationToken; raises der.DerError when malformed."""
    outer = der.read_single(token)
    if outer.tag == der.TAG_APPLICATION_0:
        this_mech, after = der.read_tlv(outer.content, 0)
        if this_mech.tag != der.TAG_OID or der.decode_oid(this_mech.content) != OID_SPNEGO:
            raise der.DerError("GSS token is not SPNEGO")
        outer = der.read_single(outer.content[after:])
    if outer.tag == der.context_tag(0):
        return NegTokenInit.parse_content(outer.content)
    if outer.tag == der.context_tag(1):
        return NegTokenResp.parse_content(outer.content)
    raise der.DerError(f"not a NegotiationToken (tag {outer.tag:#04x})")


def initial_token(kerberos: bool = False) -> bytes:
    """The server's NegTokenInit2 for the SMB2 NEGOTIATE response ([MS-SPNG] 3.2.5.2).

    Offers NTLMSSP, after both Kerberos OIDs when the server has a keytab (Windows' order),
    with the negHints hintName Windows and Samba send.
    """
    mechs = (*KERBEROS_OIDS, OID_NTLMSSP) if kerberos else (OID_NTLMSSP,)
    mech_types = der.encode(der.context_tag(0), der.encode_sequence(*(der.encode_oid(m) for m in mechs)))
    neg_hints = der.encode(
        der.context_tag(3),
        der.encode_sequence(der.encode(der.context_tag(0), der.encode(der.TAG_GENERAL_STRING, HINT_NAME))),
    )
    neg_token_init = der.encode(der.context_tag(0), der.encode_sequence(mech_types, neg_hints))
    return der.encode(der.TAG_APPLICATION_0, der.encode_oid(OID_SPNEGO) + neg_token_init)


# --- The acceptor state machine ---------------------------------------------------------------


class _State(enum.Enum):
    START = "start"
    AWAIT_NTLM_NEGOTIATE = "await_ntlm_negotiate"
    AWAIT_NTLM_AUTHENTICATE = "await_ntlm_authenticate"
    AWAIT_MECH_LIST_MIC = "await_mech_list_mic"
    AWAIT_KERBEROS = "await_kerberos"  # a Kerberos context that needs another token
    DONE = "done"
    FAILED = "failed"


class SpnegoServer:
    """Drives one NtlmServer, or a Kerberos acceptor made by ``kerberos()`` when the server has
    a keytab, through SPNEGO for one SESSION_SETUP exchange.

    ``step(token)`` returns the token to send back and whether authentication is done;
    it raises AuthError (LOGON_FAILURE for refused credentials or a bad mechListMIC,
    INVALID_PARAMETER for garbage or out-of-sequence tokens).  After an error the
    exchange is dead: every further step raises INVALID_PARAMETER.
    """

    def __init__(self, ntlm: NtlmServer, kerberos: Callable[[], "KerberosAcceptor"] | None = None):
        self._ntlm = ntlm
        self._kerberos_factory = kerberos
        self._kerberos: "KerberosAcceptor | None" = None
        self._mech = OID_NTLMSSP
        self._state = _State.START
        self._raw = False
        self._mech_types_der = b""
        self._mic_requested = False  # NTLMSSP was not the client's first choice
        self._result: "AuthResult | KerberosResult | None" = None

    @property
    def result(self) -> "AuthResult | KerberosResult | None":
        """The AuthResult once step() returned DONE, else None."""
        return self._result if self._state is _State.DONE else None

    @property
    def raw_ntlmssp(self) -> bool:
        """True when the client spoke bare NTLMSSP instead of SPNEGO."""
        return self._raw

    def step(self, token: bytes) -> tuple[bytes, StepResult]:
        if self._state in (_State.DONE, _State.FAILED):
            raise malformed("SPNEGO exchange already finished")
        if len(token) > _MAX_TOKEN_SIZE:
            self._state = _State.FAILED
            raise malformed("security token too large")
        try:
            return self._dispatch(bytes(token))
        except der.DerError as exc:
            self._state = _State.FAILED
            raise malformed(f"bad SPNEGO token: {exc}") from None
        except AuthError:
            self._state = _State.FAILED
            raise

    # --- states -------------------------------------------------------------------------

    def _dispatch(self, token: bytes) -> tuple[bytes, StepResult]:
        if self._state is _State.START:
            if not token:
                # A client that skipped the NEGOTIATE response hint asks for our mech
                # list with an empty buffer; Samba answers with its negTokenInit too.
                return initial_token(), StepResult.MORE_PROCESSING
            if token.startswith(NTLMSSP_SIGNATURE):
                self._raw = True
                self._state = _State.AWAIT_NTLM_AUTHENTICATE
                return self._ntlm.challenge(token), StepResult.MORE_PROCESSING
            return self._on_init(parse_negotiation_token(token))

        if self._raw:
            # Only AWAIT_NTLM_AUTHENTICATE is reachable in raw mode.
            self._result = self._ntlm.authenticate(token)
            self._state = _State.DONE
            return b"", StepResult.DONE

        resp = parse_negotiation_token(token)
        if not isinstance(resp, NegTokenResp):
            raise malformed("expected negTokenResp")
        if resp.neg_state is NegState.REJECT:
            raise malformed("client rejected the negotiation")
        if self._state is _State.AWAIT_NTLM_NEGOTIATE:
            return self._on_ntlm_negotiate(resp)
        if self._state is _State.AWAIT_NTLM_AUTHENTICATE:
            return self._on_ntlm_authenticate(resp)
        if self._state is _State.AWAIT_KERBEROS:
            if not resp.response_token:
                raise malformed("expected the next Kerberos token")
            return self._on_kerberos(resp.response_token, resp.mech_list_mic)
        return self._on_mech_list_mic(resp)

    def _on_init(self, token: NegTokenInit | NegTokenResp) -> tuple[bytes, StepResult]:
        if not isinstance(token, NegTokenInit):
            raise malformed("first SPNEGO token must be negTokenInit")
        self._mech_types_der = token.mech_types_der
        if self._kerberos_factory is not None and token.mech_types and token.mech_types[0] in KERBEROS_OIDS:
            self._mech = token.mech_types[0]  # answered with the OID the client named
            self._kerberos = self._kerberos_factory()
            if token.mech_token:
                return self._on_kerberos(token.mech_token, token.mech_list_mic, first=True)
            self._state = _State.AWAIT_KERBEROS
            return self._incomplete(None, first=True), StepResult.MORE_PROCESSING
        if OID_NTLMSSP not in token.mech_types:
            raise malformed("client offers no mechanism we support (NTLMSSP"
                            + (", Kerberos)" if self._kerberos_factory is not None else ")"))
        # RFC 4178 5: picking a mechanism other than the client's first is a downgrade
        # the mechListMIC must protect; the optimistic token belongs to the first mech.
        self._mic_requested = token.mech_types[0] != OID_NTLMSSP
        mech_token = token.mech_token or b""
        if mech_token.startswith(NTLMSSP_SIGNATURE):
            challenge = self._ntlm.challenge(mech_token)
            self._state = _State.AWAIT_NTLM_AUTHENTICATE
            return self._incomplete(challenge, first=True), StepResult.MORE_PROCESSING
        self._state = _State.AWAIT_NTLM_NEGOTIATE
        return self._incomplete(None, first=True), StepResult.MORE_PROCESSING

    def _on_kerberos(self, token: bytes, client_mic: bytes | None, *, first: bool = False) -> tuple[bytes, StepResult]:
        assert self._kerberos is not None
        reply = self._kerberos.step(token)
        result = self._kerberos.result
        if result is None:
            self._state = _State.AWAIT_KERBEROS
            return self._incomplete(reply or None, first=first), StepResult.MORE_PROCESSING
        self._result = result
        if client_mic is not None:
            self._check_client_mic(client_mic)
        self._state = _State.DONE
        done = NegTokenResp(neg_state=NegState.ACCEPT_COMPLETED, supported_mech=self._mech if first else None,
                            response_token=reply or None)
        return done.to_bytes(), StepResult.DONE

    def _on_ntlm_negotiate(self, resp: NegTokenResp) -> tuple[bytes, StepResult]:
        if not resp.response_token:
            raise malformed("expected the NTLM NEGOTIATE message")
        challenge = self._ntlm.challenge(resp.response_token)
        self._state = _State.AWAIT_NTLM_AUTHENTICATE
        return self._incomplete(challenge), StepResult.MORE_PROCESSING

    def _on_ntlm_authenticate(self, resp: NegTokenResp) -> tuple[bytes, StepResult]:
        if not resp.response_token:
            raise malformed("expected the NTLM AUTHENTICATE message")
        result = self._ntlm.authenticate(resp.response_token)
        self._result = result

        # [MS-SPNG] 3.2.5.1 / Samba's gensec_spnego_server_negTokenTarg_finish: a MIC
        # is exchanged when the mech can sign and either side asked for it.
        can_sign = result.can_sign
        mic_wanted = can_sign and (
            result.ntlm_mic_present or resp.mech_list_mic is not None or self._mic_requested
        )
        if can_sign and resp.mech_list_mic is not None:
            self._check_client_mic(resp.mech_list_mic)
            client_mic_checked = True
        else:
            client_mic_checked = False
        our_mic = result.make_mic(self._mech_types_der) if mic_wanted else None

        if mic_wanted and not client_mic_checked:
            self._state = _State.AWAIT_MECH_LIST_MIC
            return self._incomplete(None, mech_list_mic=our_mic), StepResult.MORE_PROCESSING
        self._state = _State.DONE
        reply = NegTokenResp(neg_state=NegState.ACCEPT_COMPLETED, mech_list_mic=our_mic)
        return reply.to_bytes(), StepResult.DONE

    def _on_mech_list_mic(self, resp: NegTokenResp) -> tuple[bytes, StepResult]:
        if resp.response_token:
            raise malformed("unexpected response token while waiting for mechListMIC")
        if resp.mech_list_mic is None:
            raise logon_failure("client did not send the required mechListMIC")
        self._check_client_mic(resp.mech_list_mic)
        self._state = _State.DONE
        return NegTokenResp(neg_state=NegState.ACCEPT_COMPLETED).to_bytes(), StepResult.DONE

    # --- helpers ------------------------------------------------------------------------

    def _check_client_mic(self, mic: bytes) -> None:
        assert self._result is not None
        if not self._result.verify_mic(self._mech_types_der, mic):
            raise logon_failure("mechListMIC does not verify")

    def _incomplete(self, response_token: bytes | None, *, first: bool = False,
                    mech_list_mic: bytes | None = None) -> bytes:
        state = NegState.REQUEST_MIC if first and self._mic_requested else NegState.ACCEPT_INCOMPLETE
        return NegTokenResp(
            neg_state=state,
            supported_mech=self._mech,
            response_token=response_token,
            mech_list_mic=mech_list_mic,
        ).to_bytes()
