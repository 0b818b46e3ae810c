"""NTLMv2 acceptor: MS-NLMP 4.2.4 vectors, RFC 1320 MD4, and real NTLM clients.

Clients used as peers: pyspnego (pure-Python NTLM with MIC), impacket, and Samba's own
NTLMSSP client through ``ntlm_auth --helper-protocol=ntlmssp-client-1`` when installed.
"""
from __future__ import annotations

import base64
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbd.auth import AuthError, NtlmServer, nt_hash
from smbd.auth.md4 import md4
from smbd.auth.ntlm import ntowfv2
from smbd.auth.ntlm_messages import (
    AuthenticateMessage,
    AvId,
    NegotiateFlags as F,
    parse_av_pairs,
)
from smbd.auth.ntlm_security import NtlmSessionSecurity, seal_key, sign_key
from smbd.status import NtStatus


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- RFC 1320 appendix A.5 -----------------------------------------------------------------


@pytest.mark.parametrize(
    "message,digest",
    [
        (b"", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        (b"a", "bde52cb31de33e46245e05fbdbd6fb24"),
        (b"abc", "a448017aaf21d8525fc10ae87aa6729d"),
        (b"message digest", "d9130a8164549fe818874806e1c7014b"),
        (b"abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        (b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "043f8582f241db351ce627e153e7f0e4"),
        (b"1234567890" * 8, "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ],
)
def test_md4_rfc1320_vectors(message, digest):
    assert md4(message).hex() == digest


# --- MS-NLMP 4.2.4 (NTLMv2) ----------------------------------------------------------------

SPEC_USER, SPEC_DOMAIN, SPEC_PASSWORD = "User", "Domain", "Password"
SPEC_SERVER_CHALLENGE = h("0123456789abcdef")
SPEC_RANDOM_SESSION_KEY = b"\x55" * 16
# 4.2.4.3: the AUTHENTICATE_MESSAGE (flags e2888235, time 0, client challenge aa*8,
# AV pairs NbDomainName "Domain" and NbComputerName "Server").
SPEC_AUTHENTICATE = h("""
    4e544c4d5353500003000000180018006c00000054005400840000000c000c00
    48000000080008005400000010001000 5c00000010001000d8000000358288e2
    0501280a0000000f44006f006d00610069006e00550073006500720043004f00
    4d0050005500540045005200 86c35097ac9cec102554764a57cccc19aaaaaaaa
    aaaaaaaa68cd0ab851e51c96aabc927bebef6a1c010100000000000000000000
    00000000aaaaaaaaaaaaaaaa0000000002000c0044006f006d00610069006e00
    01000c005300650072007600650072000000000000000000c5dad2544fc97990
    94ce1ce90bc9d03e""")


def _negotiate(flags: int) -> bytes:
    """A NEGOTIATE_MESSAGE ([MS-NLMP] 2.2.1.1) with empty domain/workstation and a Version."""
    return b"NTLMSSP\x00" + struct.pack("<II8s8s8s", 1, flags, bytes(8), bytes(8), h("0601b11d0000000f"))


SPEC_FLAGS = 0xE2888235 | F.SEAL  # what the 4.2.4 client negotiated


def _spec_server(**kwargs) -> NtlmServer:
    users = {SPEC_USER.lower(): nt_hash(SPEC_PASSWORD)}
    server = NtlmServer(
        lambda user, domain: users.get(user.lower()),
        netbios_name="Server",
        domain="Domain",
        rng=lambda n: SPEC_SERVER_CHALLENGE,
        clock=lambda: 0.0,
        **kwargs,
    )
    server.challenge(_negotiate(SPEC_FLAGS))
    return server


def test_spec_ntowfv2():
    assert nt_hash(SPEC_PASSWORD) == h("a4f49c406510bdcab6824ee7c30fd852")
    assert ntowfv2(nt_hash(SPEC_PASSWORD), SPEC_USER, SPEC_DOMAIN) == h("0c868a403bfd7a93a3001ef22ef02e3f")


def test_spec_authenticate_message_yields_random_session_key():
    parsed = AuthenticateMessage.parse(SPEC_AUTHENTICATE)
    assert (parsed.user, parsed.domain, parsed.workstation) == ("User", "Domain", "COMPUTER")
    assert parsed.nt_response[:16] == h("68cd0ab851e51c96aabc927bebef6a1c")  # 4.2.4.2.2 NTProofStr
    assert parsed.encrypted_random_session_key == h("c5dad2544fc9799094ce1ce90bc9d03e")  # 4.2.4.2.3
    assert parsed.mic is None  # payload starts at 72: Version but no MIC

    result = _spec_server().authenticate(SPEC_AUTHENTICATE)
    assert (result.user, result.domain) == ("User", "Domain")
    assert not result.is_guest and not result.is_anonymous
    # SessionBaseKey 8de40cca... (4.2.4.1.2) decrypts EncryptedRandomSessionKey to 55*16.
    assert result.session_key == SPEC_RANDOM_SESSION_KEY


def test_spec_session_security_keys_and_unwrap():
    """MS-NLMP 4.2.4.4: client-to-server keys and a GSS_WrapEx of "Plaintext"."""
    assert seal_key(SPEC_RANDOM_SESSION_KEY, SPEC_FLAGS, True) == h("59f600973cc4960a25480a7c196e4c58")
    assert sign_key(SPEC_RANDOM_SESSION_KEY, True) == h("4788dc861b4782f35d43fd98fe1a2d39")
    result = _spec_server().authenticate(SPEC_AUTHENTICATE)
    plaintext = "Plaintext".encode("utf-16-le")
    sealed = h("54e50165bf1936dc996020c1811b0f06fb5f")
    signature = h("010000007fb38ec5c55d497600000000")
    assert result.security.unseal(sealed, signature) == plaintext
    client = NtlmSessionSecurity(SPEC_RANDOM_SESSION_KEY, SPEC_FLAGS, acceptor=False)
    assert client.seal(plaintext) == (sealed, signature)


def test_spec_wrong_password_is_logon_failure():
    users = {"user": nt_hash("NotThePassword")}
    server = NtlmServer(lambda u, d: users.get(u.lower()), netbios_name="Server", domain="Domain",
                        rng=lambda n: SPEC_SERVER_CHALLENGE)
    server.challenge(_negotiate(SPEC_FLAGS))
    with pytest.raises(AuthError) as info:
        server.authenticate(SPEC_AUTHENTICATE)
    assert info.value.status == NtStatus.LOGON_FAILURE


def test_spec_message_against_other_challenge_fails():
    server = _spec_server()
    server.challenge(_negotiate(SPEC_FLAGS))  # new exchange with the same (pinned) challenge
    server._server_challenge = h("fedcba9876543210")
    with pytest.raises(AuthError) as info:
        server.authenticate(SPEC_AUTHENTICATE)
    assert info.value.status == NtStatus.LOGON_FAILURE


def test_challenge_message_layout():
    server = _spec_server()
    challenge = server.challenge(_negotiate(F.UNICODE | F.NTLM | F.SIGN | F.KEY_EXCH | F.NEGOTIATE_128))
    assert challenge[:12] == b"NTLMSSP\x00\x02\x00\x00\x00"
    (flags,) = struct.unpack_from("<I", challenge, 20)
    for wanted in (F.UNICODE, F.NTLM, F.SIGN, F.KEY_EXCH, F.NEGOTIATE_128, F.TARGET_INFO,
                   F.EXTENDED_SESSIONSECURITY, F.TARGET_TYPE_SERVER, F.VERSION, F.REQUEST_TARGET):
        assert flags & wanted, hex(wanted)
    assert not flags & F.SEAL  # not asked for, not granted
    assert not flags & F.NEGOTIATE_56
    assert challenge[24:32] == SPEC_SERVER_CHALLENGE
    name_len, _, name_off = struct.unpack_from("<HHI", challenge, 12)
    assert challenge[name_off:name_off + name_len].decode("utf-16-le") == "SERVER"
    info_len, _, info_off = struct.unpack_from("<HHI", challenge, 40)
    pairs = parse_av_pairs(challenge[info_off:info_off + info_len])
    assert info_off + info_len == len(challenge)
    assert pairs[AvId.NB_DOMAIN_NAME].decode("utf-16-le") == "DOMAIN"
    assert pairs[AvId.NB_COMPUTER_NAME].decode("utf-16-le") == "SERVER"
    assert pairs[AvId.DNS_COMPUTER_NAME].decode("utf-16-le") == "server"
    assert AvId.DNS_DOMAIN_NAME in pairs
    # clock() == 0 (1970) is 11644473600 s after 1601 in 100 ns units.
    assert pairs[AvId.TIMESTAMP] == struct.pack("<Q", 116444736000000000)


# --- Real clients --------------------------------------------------------------------------

USERS = {"alice": nt_hash("correct horse"), "bob": nt_hash("b0b")}


def _server(allow_guest: bool = False) -> NtlmServer:
    return NtlmServer(lambda user, domain: USERS.get(user.lower()), netbios_name="SMBDD", domain="WORKGROUP",
                      dns_name="smbdd.example.test", allow_guest=allow_guest)


def test_pyspnego_client_right_password_with_mic():
    spnego = pytest.importorskip("spnego")
    client = spnego.client("alice", "correct horse", hostname="smbdd", protocol="ntlm")
    server = _server()
    challenge = server.challenge(client.step())
    result = server.authenticate(client.step(challenge))
    assert client.complete
    assert result.user == "alice" and not result.is_guest
    assert result.ntlm_mic_present  # pyspnego puts a MIC in AUTHENTICATE
    assert result.session_key == client.session_key
    # NTLM session security agrees in both directions (what SPNEGO's mechListMIC uses).
    assert result.verify_mic(b"mech types", client.sign(b"mech types"))
    client.verify(b"server data", result.make_mic(b"server data"))


def test_pyspnego_client_wrong_password():
    spnego = pytest.importorskip("spnego")
    client = spnego.client("alice", "battery staple", hostname="smbdd", protocol="ntlm")
    server = _server(allow_guest=True)  # a known user with a bad password never becomes guest
    challenge = server.challenge(client.step())
    with pytest.raises(AuthError) as info:
        server.authenticate(client.step(challenge))
    assert info.value.status == NtStatus.LOGON_FAILURE


def test_pyspnego_client_domain_variants_accepted():
    spnego = pytest.importorskip("spnego")
    for principal in ("WORKGROUP\\bob", "otherdomain\\bob", "bob"):
        client = spnego.client(principal, "b0b", hostname="smbdd", protocol="ntlm")
        server = _server()
        result = server.authenticate(client.step(server.challenge(client.step())))
        assert result.user == "bob" and result.session_key == client.session_key


def test_tampered_ntlm_mic_is_refused():
    spnego = pytest.importorskip("spnego")
    client = spnego.client("alice", "correct horse", hostname="smbdd", protocol="ntlm")
    server = _server()
    authenticate = bytearray(client.step(server.challenge(client.step())))
    assert AuthenticateMessage.parse(bytes(authenticate)).mic is not None
    authenticate[AuthenticateMessage.MIC_OFFSET] ^= 0x01
    with pytest.raises(AuthError) as info:
        server.authenticate(bytes(authenticate))
    assert info.value.status == NtStatus.LOGON_FAILURE


def test_unknown_user_is_guest_only_when_allowed():
    spnego = pytest.importorskip("spnego")
    for allow_guest in (False, True):
        client = spnego.client("mallory", "whatever", hostname="smbdd", protocol="ntlm")
        server = _server(allow_guest=allow_guest)
        challenge = server.challenge(client.step())
        if not allow_guest:
            with pytest.raises(AuthError) as info:
                server.authenticate(client.step(challenge))
            assert info.value.status == NtStatus.LOGON_FAILURE
        else:
            result = server.authenticate(client.step(challenge))
            assert result.is_guest and result.session_key == b"" and not result.can_sign


def test_impacket_ntlmv2_client():
    ntlm = pytest.importorskip("impacket.ntlm")
    type1 = ntlm.getNTLMSSPType1("", "", signingRequired=True)
    server = _server()
    challenge = server.challenge(type1.getData())
    type3, exported_session_key = ntlm.getNTLMSSPType3(type1, challenge, "alice", "correct horse", "WORKGROUP")
    result = server.authenticate(type3.getData())
    assert result.user == "alice"
    assert result.session_key == exported_session_key


def test_impacket_ntlmv1_client_is_refused():
    ntlm = pytest.importorskip("impacket.ntlm")
    type1 = ntlm.getNTLMSSPType1("", "", signingRequired=True, use_ntlmv2=False)
    server = _server(allow_guest=True)
    challenge = server.challenge(type1.getData())
    type3, _ = ntlm.getNTLMSSPType3(type1, challenge, "alice", "correct horse", "WORKGROUP", use_ntlmv2=False)
    with pytest.raises(AuthError) as info:
        server.authenticate(type3.getData())
    assert info.value.status == NtStatus.LOGON_FAILURE


def _anonymous_authenticate() -> bytes:
    """An anonymous AUTHENTICATE_MESSAGE: all fields empty, LM response one zero byte."""
    payload_offset = 72
    fields = [(1, payload_offset)] + [(0, payload_offset + 1)] * 5
    body = b"".join(struct.pack("<HHI", length, length, offset) for length, offset in fields)
    return b"NTLMSSP\x00" + struct.pack("<I", 3) + body + struct.pack("<I", F.UNICODE | F.NTLM | F.ANONYMOUS) \
        + bytes(8) + b"\x00"


def test_anonymous_only_when_guest_allowed():
    for allow_guest in (False, True):
        server = _server(allow_guest=allow_guest)
        server.challenge(_negotiate(F.UNICODE | F.NTLM))
        if allow_guest:
            result = server.authenticate(_anonymous_authenticate())
            assert result.is_anonymous and result.anonymous and result.session_key == b""
        else:
            with pytest.raises(AuthError) as info:
                server.authenticate(_anonymous_authenticate())
            assert info.value.status == NtStatus.LOGON_FAILURE


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("ntlm_auth") is None, reason="Samba's ntlm_auth not installed")
@pytest.mark.parametrize("password,ok", [("correct horse", True), ("wrong", False)])
def test_samba_ntlm_auth_client(password, ok):
    """Samba's NTLMSSP client (squid helper protocol: YR -> negotiate, TT challenge -> AF auth)."""
    process = subprocess.Popen(
        ["ntlm_auth", "--configfile=/dev/null", "--helper-protocol=ntlmssp-client-1",
         "--username=alice", f"--password={password}", "--domain=WORKGROUP"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        def talk(line: str) -> bytes:
            process.stdin.write(line + "\n")
            process.stdin.flush()
            reply = process.stdout.readline().split()
            assert reply and reply[0] in ("YR", "KK", "AF"), reply
            return base64.b64decode(reply[1])

        server = _server()
        challenge = server.challenge(talk("YR"))
        authenticate = talk("TT " + base64.b64encode(challenge).decode())
        if ok:
            result = server.authenticate(authenticate)
            assert result.user == "alice" and len(result.session_key) == 16
        else:
            with pytest.raises(AuthError) as info:
                server.authenticate(authenticate)
            assert info.value.status == NtStatus.LOGON_FAILURE
    finally:
        process.stdin.close()
        process.wait(timeout=10)


# --- Malformed input ------------------------------------------------------------------------


def test_out_of_order_and_garbage_are_invalid_parameter():
    server = _server()
    with pytest.raises(AuthError) as info:
        server.authenticate(SPEC_AUTHENTICATE)  # no CHALLENGE yet
    assert info.value.status == NtStatus.INVALID_PARAMETER
    with pytest.raises(AuthError) as info:
        server.challenge(b"NTLMSSP\x00\x03\x00\x00\x00" + bytes(8))  # wrong type
    assert info.value.status == NtStatus.INVALID_PARAMETER
    server.challenge(_negotiate(SPEC_FLAGS))
    broken = bytearray(SPEC_AUTHENTICATE)
    struct.pack_into("<I", broken, 24, 0xFFF0)  # NtChallengeResponse offset out of bounds
    with pytest.raises(AuthError) as info:
        server.authenticate(bytes(broken))
    assert info.value.status == NtStatus.INVALID_PARAMETER


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=len(SPEC_AUTHENTICATE)))
def test_fuzzed_authenticate_raises_only_auth_error(noise, cut):
    server = _spec_server()
    candidates = [noise, SPEC_AUTHENTICATE[:cut], SPEC_AUTHENTICATE[:cut] + noise]
    for data in candidates:
        server = _spec_server()
        try:
            server.authenticate(data)
        except AuthError as exc:
            assert exc.status in (NtStatus.INVALID_PARAMETER, NtStatus.LOGON_FAILURE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_fuzzed_negotiate_raises_only_auth_error(data):
    try:
        _server().challenge(b"NTLMSSP\x00" + data)
    except AuthError as exc:
        assert exc.status == NtStatus.INVALID_PARAMETER


def test_rc4_known_answer_and_a_key_stream_that_continues():
    from smbd.auth.rc4 import Rc4, rc4

    # RFC 6229's key streams (offset 0) for a 128-bit key, NTLM's size, and a 40-bit one.
    assert rc4(bytes(range(1, 17)), bytes(16)).hex() == "9ac7cc9a609d1ef7b2932899cde41b97"
    assert rc4(bytes(range(1, 6)), bytes(16)).hex() == "b2396305f03dc027ccc3524a0a1118a8"
    handle = Rc4(bytes(range(1, 17)))
    assert (handle.update(bytes(5)) + handle.update(bytes(11))).hex() == "9ac7cc9a609d1ef7b2932899cde41b97"
