"""SPNEGO acceptor, DER codec and the NEGOTIATE-response hint token.

Peers: pyspnego's Negotiate client (NTLM with MIC and mechListMIC), tokens packed and
parsed by pyspnego's independent ASN.1 code (Kerberos-first and MIC-ordering cases a
real Windows/smbclient produces), and Samba's own SPNEGO client through
``ntlm_auth --helper-protocol=gss-spnego-client`` when installed.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbd.auth import AuthError, NtlmServer, SpnegoServer, StepResult, initial_token, nt_hash
from smbd.auth import der
from smbd.auth.spnego import OID_KERBEROS5, OID_MS_KERBEROS5, OID_NTLMSSP, OID_SPNEGO, NegState
from smbd.status import NtStatus

try:  # pyspnego: the client peer and an independent ASN.1 implementation
    import spnego
    from spnego._spnego import NegTokenInit as PyNegTokenInit
    from spnego._spnego import NegTokenResp as PyNegTokenResp
    from spnego._spnego import pack_mech_type_list, unpack_token
except ImportError:  # pragma: no cover - the DER tests still run
    spnego = None

needs_pyspnego = pytest.mark.skipif(spnego is None, reason="pyspnego not installed")

USERS = {"alice": nt_hash("correct horse")}


def make_server(allow_guest: bool = False) -> SpnegoServer:
    ntlm = NtlmServer(lambda user, domain: USERS.get(user.lower()), netbios_name="SMBDD", domain="WORKGROUP",
                      allow_guest=allow_guest)
    return SpnegoServer(ntlm)


def ntlm_client(password: str = "correct horse", user: str = "alice"):
    return spnego.client(user, password, hostname="smbdd", protocol="ntlm")


# --- DER ----------------------------------------------------------------------------------


def test_ntlmssp_oid_encoding_from_ms_spng():
    # [MS-SPNG] / [MS-NLMP] 1.9: NTLMSSP is 1.3.6.1.4.1.311.2.2.10.
    assert der.encode_oid(OID_NTLMSSP) == bytes.fromhex("060a2b06010401823702020a")
    assert der.decode_oid(bytes.fromhex("2b06010401823702020a")) == OID_NTLMSSP
    assert der.encode_oid(OID_SPNEGO) == bytes.fromhex("06062b0601050502")
    assert der.decode_oid(bytes.fromhex("2a864886f712010202")) == OID_KERBEROS5


def test_der_long_lengths_roundtrip_and_rejects():
    for size in (0, 1, 127, 128, 255, 256, 70000):
        encoded = der.encode(der.TAG_OCTET_STRING, b"x" * size)
        assert der.read_single(encoded, der.TAG_OCTET_STRING).content == b"x" * size
    with pytest.raises(der.DerError):
        der.read_single(b"\x04\x80abc\x00\x00")  # indefinite length
    with pytest.raises(der.DerError):
        der.read_single(b"\x04\x05abc")  # truncated
    with pytest.raises(der.DerError):
        der.read_single(b"\x04\x85\x00\x00\x00\x00\x01a")  # 5 length bytes
    with pytest.raises(der.DerError):
        der.read_single(b"\x04\x01ab")  # trailing byte
    with pytest.raises(der.DerError):
        der.decode_oid(b"\x2b\x86")  # unterminated arc


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_der_reader_raises_only_der_error(data):
    try:
        tlv = der.read_single(data)
        der.read_children(tlv.content)
    except der.DerError:
        pass


# --- The NEGOTIATE response token -----------------------------------------------------------


# The security buffer of Samba 4.17's SMB2 NEGOTIATE response (smbd on loopback, read
# with impacket), byte for byte.
SAMBA_417_NEGOTIATE_TOKEN = bytes.fromhex(
    "604806062b0601050502a03e303ca00e300c060a2b06010401823702020aa32a3028a0261b246e6f745f"
    "646566696e65645f696e5f5246433431373840706c656173655f69676e6f7265"
)


def test_initial_token_is_byte_identical_to_samba():
    assert initial_token() == SAMBA_417_NEGOTIATE_TOKEN


@needs_pyspnego
def test_initial_token_as_windows_and_samba_send_it():
    token = initial_token()
    parsed = unpack_token(token)  # pyspnego's parser
    assert isinstance(parsed, PyNegTokenInit)
    assert parsed.mech_types == [OID_NTLMSSP]
    assert parsed.hint_name == b"not_defined_in_RFC4178@please_ignore"
    assert parsed.mech_token is None and parsed.mech_list_mic is None
    # Same bytes as pyspnego would produce for a NegTokenInit2 with this hint.
    assert token == PyNegTokenInit([OID_NTLMSSP], hint_name=b"not_defined_in_RFC4178@please_ignore").pack()


@needs_pyspnego
def test_pyspnego_client_accepts_initial_token_hint():
    client = spnego.client("alice", "correct horse", hostname="smbdd", protocol="negotiate")
    first = client.step(initial_token())
    assert isinstance(unpack_token(first), PyNegTokenInit)


# --- Full exchanges with pyspnego's Negotiate client ----------------------------------------


def run_exchange(server: SpnegoServer, client) -> tuple[list[bytes], bytes]:
    """Drive client and server to completion; return the server's replies and the last one."""
    replies = []
    token = client.step()
    while True:
        reply, state = server.step(token)
        replies.append(reply)
        if state is StepResult.DONE:
            return replies, reply
        token = client.step(reply)


@needs_pyspnego
def test_negotiate_right_password_with_mechlistmic():
    server = make_server()
    client = spnego.client("alice", "correct horse", hostname="smbdd", protocol="negotiate")
    replies, final = run_exchange(server, client)
    first = unpack_token(replies[0])
    assert first.neg_state == NegState.ACCEPT_INCOMPLETE and first.supported_mech == OID_NTLMSSP
    assert first.response_token.startswith(b"NTLMSSP\x00\x02\x00\x00\x00")
    last = unpack_token(final)
    assert last.neg_state == NegState.ACCEPT_COMPLETED
    assert last.mech_list_mic is not None  # the client sent one, so we answer with ours
    assert client.step(final) is None  # pyspnego verifies our mechListMIC here
    assert client.complete
    assert server.result.user == "alice" and server.result.session_key == client.session_key
    assert not server.raw_ntlmssp


@needs_pyspnego
def test_negotiate_wrong_password_then_dead():
    server = make_server()
    client = spnego.client("alice", "battery staple", hostname="smbdd", protocol="negotiate")
    reply, _ = server.step(client.step())
    with pytest.raises(AuthError) as info:
        server.step(client.step(reply))
    assert info.value.status == NtStatus.LOGON_FAILURE
    assert server.result is None
    with pytest.raises(AuthError) as info:
        server.step(b"anything")
    assert info.value.status == NtStatus.INVALID_PARAMETER


@needs_pyspnego
def test_raw_ntlmssp_without_spnego():
    server = make_server()
    client = ntlm_client()
    replies, final = run_exchange(server, client)
    assert replies[0].startswith(b"NTLMSSP\x00\x02")
    assert final == b""
    assert server.raw_ntlmssp and server.result.session_key == client.session_key


# --- Kerberos first, MIC ordering (token shapes Windows and smbclient send) ----------------

MECHS_KERBEROS_FIRST = [OID_MS_KERBEROS5, OID_KERBEROS5, OID_NTLMSSP]


@needs_pyspnego
def test_kerberos_first_downgrade_requests_mic():
    server = make_server()
    client = ntlm_client()
    fake_krb5_ap_req = b"\x60\x10\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00" + os.urandom(2)
    reply, state = server.step(PyNegTokenInit(MECHS_KERBEROS_FIRST, mech_token=fake_krb5_ap_req).pack())
    first = unpack_token(reply)
    assert state is StepResult.MORE_PROCESSING
    assert first.neg_state == NegState.REQUEST_MIC
    assert first.supported_mech == OID_NTLMSSP
    assert first.response_token is None  # the optimistic token was Kerberos; ask for NTLM

    reply, state = server.step(PyNegTokenResp(response_token=client.step()).pack())
    second = unpack_token(reply)
    assert state is StepResult.MORE_PROCESSING and second.neg_state == NegState.ACCEPT_INCOMPLETE
    authenticate = client.step(second.response_token)

    mech_list = pack_mech_type_list(MECHS_KERBEROS_FIRST)
    reply, state = server.step(PyNegTokenResp(response_token=authenticate, mech_list_mic=client.sign(mech_list)).pack())
    last = unpack_token(reply)
    assert state is StepResult.DONE and last.neg_state == NegState.ACCEPT_COMPLETED
    client.verify(mech_list, last.mech_list_mic)  # raises if our MIC is wrong
    assert server.result.session_key == client.session_key


class FakeKerberos:
    """Stands in for smbd.auth.kerberos.KerberosAcceptor: takes one AP-REQ, answers an AP-REP."""

    def __init__(self):
        self.result = None
        self.tokens: list[bytes] = []

    def step(self, token: bytes) -> bytes:
        from smbd.auth.kerberos import KerberosResult

        self.tokens.append(token)
        self.result = KerberosResult(user="alice", domain="SMBDD.TEST", session_key=b"k" * 32)
        return b"AP-REP"


@needs_pyspnego
@pytest.mark.parametrize("first", [OID_MS_KERBEROS5, OID_KERBEROS5])
def test_kerberos_first_with_a_keytab_completes_in_one_round_without_mic(first):
    acceptor = FakeKerberos()
    server = SpnegoServer(make_server()._ntlm, kerberos=lambda: acceptor)
    mechs = [first, OID_NTLMSSP]
    reply, state = server.step(PyNegTokenInit(mechs, mech_token=b"AP-REQ").pack())
    done = unpack_token(reply)
    assert state is StepResult.DONE and done.neg_state == NegState.ACCEPT_COMPLETED
    assert done.supported_mech == first  # the OID the client named, as Windows answers
    assert done.response_token == b"AP-REP" and done.mech_list_mic is None
    assert acceptor.tokens == [b"AP-REQ"]
    assert (server.result.user, server.result.domain) == ("alice", "SMBDD.TEST")


@needs_pyspnego
def test_ntlm_first_goes_ntlm_even_with_a_keytab():
    server = SpnegoServer(make_server()._ntlm, kerberos=lambda: pytest.fail("Kerberos not chosen"))
    client = ntlm_client()
    reply, state = server.step(PyNegTokenInit([OID_NTLMSSP, OID_KERBEROS5], mech_token=client.step()).pack())
    assert state is StepResult.MORE_PROCESSING and unpack_token(reply).supported_mech == OID_NTLMSSP


def test_initial_token_offers_kerberos_first_only_with_a_keytab():
    assert initial_token(kerberos=False) == initial_token()
    with_krb = initial_token(kerberos=True)
    mechs = [der.encode_oid(m) for m in (OID_MS_KERBEROS5, OID_KERBEROS5, OID_NTLMSSP)]
    assert b"".join(mechs) in with_krb and der.encode_oid(OID_KERBEROS5) not in initial_token()


@needs_pyspnego
def test_downgrade_without_mechlistmic_is_refused():
    server = make_server()
    client = ntlm_client()
    server.step(PyNegTokenInit(MECHS_KERBEROS_FIRST).pack())
    reply, _ = server.step(PyNegTokenResp(response_token=client.step()).pack())
    authenticate = client.step(unpack_token(reply).response_token)
    reply, state = server.step(PyNegTokenResp(response_token=authenticate).pack())
    assert state is StepResult.MORE_PROCESSING  # our MIC sent, theirs awaited
    with pytest.raises(AuthError) as info:
        server.step(PyNegTokenResp(neg_state=NegState.ACCEPT_COMPLETED).pack())
    assert info.value.status == NtStatus.LOGON_FAILURE


@needs_pyspnego
def test_ntlm_mic_without_mechlistmic_takes_an_extra_round_like_samba():
    server = make_server()
    client = ntlm_client()
    mech_list = pack_mech_type_list([OID_NTLMSSP])
    reply, _ = server.step(PyNegTokenInit([OID_NTLMSSP], mech_token=client.step()).pack())
    authenticate = client.step(unpack_token(reply).response_token)
    reply, state = server.step(PyNegTokenResp(response_token=authenticate).pack())
    middle = unpack_token(reply)
    assert state is StepResult.MORE_PROCESSING
    assert middle.neg_state == NegState.ACCEPT_INCOMPLETE and middle.response_token is None
    client.verify(mech_list, middle.mech_list_mic)
    reply, state = server.step(PyNegTokenResp(mech_list_mic=client.sign(mech_list)).pack())
    assert state is StepResult.DONE and unpack_token(reply).neg_state == NegState.ACCEPT_COMPLETED
    assert server.result.user == "alice"


@needs_pyspnego
def test_bad_mechlistmic_is_logon_failure():
    server = make_server()
    client = ntlm_client()
    reply, _ = server.step(PyNegTokenInit([OID_NTLMSSP], mech_token=client.step()).pack())
    authenticate = client.step(unpack_token(reply).response_token)
    forged = client.sign(pack_mech_type_list([OID_KERBEROS5, OID_NTLMSSP]))  # MIC over another list
    with pytest.raises(AuthError) as info:
        server.step(PyNegTokenResp(response_token=authenticate, mech_list_mic=forged).pack())
    assert info.value.status == NtStatus.LOGON_FAILURE


@needs_pyspnego
def test_init_without_token_then_ntlm_negotiate():
    server = make_server()
    client = ntlm_client()
    reply, _ = server.step(PyNegTokenInit([OID_NTLMSSP]).pack())
    first = unpack_token(reply)
    assert first.neg_state == NegState.ACCEPT_INCOMPLETE and first.response_token is None
    reply, _ = server.step(PyNegTokenResp(response_token=client.step()).pack())
    authenticate = client.step(unpack_token(reply).response_token)
    mic = client.sign(pack_mech_type_list([OID_NTLMSSP]))
    _, state = server.step(PyNegTokenResp(response_token=authenticate, mech_list_mic=mic).pack())
    assert state is StepResult.DONE


@needs_pyspnego
def test_guest_session_completes_without_mic():
    server = make_server(allow_guest=True)
    client = spnego.client("stranger", "x", hostname="smbdd", protocol="negotiate")
    reply, _ = server.step(client.step())
    final, state = server.step(client.step(reply))
    assert state is StepResult.DONE
    assert server.result.is_guest and server.result.session_key == b""
    parsed = unpack_token(final)
    assert parsed.neg_state == NegState.ACCEPT_COMPLETED and parsed.mech_list_mic is None


@needs_pyspnego
def test_no_ntlm_in_mech_list_is_invalid_parameter():
    with pytest.raises(AuthError) as info:
        make_server().step(PyNegTokenInit([OID_KERBEROS5], mech_token=b"\x60\x00").pack())
    assert info.value.status == NtStatus.INVALID_PARAMETER


@needs_pyspnego
def test_empty_first_token_gets_our_mech_list_then_normal_exchange():
    server = make_server()
    reply, state = server.step(b"")
    assert state is StepResult.MORE_PROCESSING and unpack_token(reply).mech_types == [OID_NTLMSSP]
    client = spnego.client("alice", "correct horse", hostname="smbdd", protocol="negotiate")
    token = client.step(reply)
    while True:
        reply, state = server.step(token)
        if state is StepResult.DONE:
            break
        token = client.step(reply)
    assert server.result.session_key == client.session_key


@needs_pyspnego
def test_negtokenresp_first_is_invalid_parameter():
    with pytest.raises(AuthError) as info:
        make_server().step(PyNegTokenResp(response_token=b"NTLMSSP\x00").pack())
    assert info.value.status == NtStatus.INVALID_PARAMETER


@needs_pyspnego
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=80))
def test_fuzzed_tokens_raise_only_invalid_parameter(noise, cut):
    valid = PyNegTokenInit([OID_NTLMSSP], mech_token=b"NTLMSSP\x00\x01\x00\x00\x00" + bytes(8)).pack()
    for token in (noise, valid[:cut], valid[:cut] + noise):
        try:
            make_server().step(token)
        except AuthError as exc:
            assert exc.status == NtStatus.INVALID_PARAMETER


# --- Samba's SPNEGO client ------------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("ntlm_auth") is None, reason="Samba's ntlm_auth not installed")
@pytest.mark.parametrize("password,ok", [("correct horse", True), ("wrong", False)])
def test_samba_gss_spnego_client(password, ok):
    process = subprocess.Popen(
        ["ntlm_auth", "--configfile=/dev/null", "--helper-protocol=gss-spnego-client",
         "--username=alice", f"--password={password}", "--domain=WORKGROUP"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )

    def talk(line: str) -> tuple[str, bytes]:
        process.stdin.write(line + "\n")
        process.stdin.flush()
        reply = process.stdout.readline().split()
        assert reply and reply[0] in ("YR", "KK", "AF"), reply
        return reply[0], base64.b64decode(reply[1]) if len(reply) > 1 else b""

    try:
        server = make_server()
        _, token = talk("YR")
        reply, state = server.step(token)
        assert state is StepResult.MORE_PROCESSING
        _, token = talk("TT " + base64.b64encode(reply).decode())
        if not ok:
            with pytest.raises(AuthError) as info:
                server.step(token)
            assert info.value.status == NtStatus.LOGON_FAILURE
            return
        reply, state = server.step(token)
        assert state is StepResult.DONE
        verdict, _ = talk("TT " + base64.b64encode(reply).decode())
        assert verdict == "AF"  # Samba's client accepted our final token
        assert server.result.user == "alice" and len(server.result.session_key) == 16
    finally:
        process.stdin.close()
        process.wait(timeout=10)
