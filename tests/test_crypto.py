"""SMB2/3 key derivation, signing and encryption.

Vectors come from Microsoft's Open Specifications blog posts:
- "SMB 3.1.1 Pre-authentication integrity in Windows 10" (preauth hash chain and the
  3.1.1 signing key),
- "Encryption in SMB 3.0: a protocol perspective" (AES-128-CCM, 3.0 keys),
- "SMB 3.1.1 Encryption in Windows 10" (AES-128-GCM, 3.1.1 keys).
In those posts "EncryptionKey" is the client's (client -> server) key, which is the
server's *decrypting* key, and vice versa.

Signing has no published message vector there, so it is cross-checked against
smbprotocol's independent client implementation.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smbd.crypto import (
    CIPHER_AES_128_CCM,
    CIPHER_AES_128_GCM,
    CIPHER_AES_256_CCM,
    CIPHER_AES_256_GCM,
    DIALECT_SMB_2_0_2,
    DIALECT_SMB_2_1,
    DIALECT_SMB_3_0,
    DIALECT_SMB_3_0_2,
    DIALECT_SMB_3_1_1,
    SIGNING_AES_CMAC,
    SIGNING_AES_GMAC,
    SIGNING_HMAC_SHA256,
    TRANSFORM_HEADER_SIZE,
    DecryptError,
    PreauthHash,
    decrypt_message,
    derive_session_keys,
    encrypt_message,
    kdf,
    parse_transform_header,
    sign,
    verify_signature,
)
from smbd.status import ProtocolViolation


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --- "SMB 3.1.1 Pre-authentication integrity in Windows 10" --------------------------------

PREAUTH_MESSAGES = [
    (  # NEGOTIATE request
        h("""FE534D4240000100000000000000800000000000000000000100000000000000FFFE000000000000
        00000000000000000000000000000000000000000000000024000500000000003F000000ECD86F32
        6276024F9F7752B89BB33F3A70000000020000000202100200030203110300000100260000000000
        010020000100FA49E6578F1F3A9F4CD3E9CC14A67AA884B3D05844E0E5A118225C15887F32FF0000
        0200060000000000020002000100"""),
        h("""DD94EFC5321BB618A2E208BA8920D2F422992526947A409B5037DE1E0FE8C7362B8C47122594CDE0
        CE26AA9DFC8BCDBDE0621957672623351A7540F1E54A0426"""),
    ),
    (  # NEGOTIATE response
        h("""FE534D4240000100000000000000010001000000000000000100000000000000FFFE000000000000
        000000000000000000000000000000000000000000000000410001001103020039CBCAF329714942
        BDCE5D60F09AB3FB2F000000000080000000800000008000D8DAE5ADCBAED00109094AB095AED001
        80004001C00100006082013C06062B0601050502A08201303082012CA01A3018060A2B0601040182
        3702021E060A2B06010401823702020AA282010C048201084E45474F455854530100000000000000
        60000000700000007C7CC0FD06D6362D02DDE1CF343BFE292900F49750B4AA97934D9C4296B26E51
        FD370471B235E15A50DAE15BD5489C87000000000000000060000000010000000000000000000000
        5C33530DEAF90D4DB2EC4AE3786EC3084E45474F4558545303000000010000004000000098000000
        7C7CC0FD06D6362D02DDE1CF343BFE295C33530DEAF90D4DB2EC4AE3786EC3084000000058000000
        3056A05430523027802530233121301F06035504031318546F6B656E205369676E696E6720507562
        6C6963204B65793027802530233121301F06035504031318546F6B656E205369676E696E67205075
        626C6963204B6579010026000000000001002000010060A3C3B95C3C7CCD51EC536648D9B3AC74C4
        83CA5B65385A251117BEB30712E50000020004000000000001000200"""),
        h("""324BFA92A4F3A190E466EBEA08D9C110DC88BFED758D9846ECC6F541CC1D02AE3C94A79F36011E99
        7E13F841B91B50957AD07B19C8E2539C0B23FDAE09D2C513"""),
    ),
    (  # SESSION_SETUP request 1
        h("""FE534D4240000100000000000100800000000000000000000200000000000000FFFE000000000000
        00000000000000000000000000000000000000000000000019000001010000000000000058004A00
        0000000000000000604806062B0601050502A03E303CA00E300C060A2B06010401823702020AA22A
        04284E544C4D5353500001000000978208E200000000000000000000000000000000060380250000
        000F"""),
        h("""AC0B0F2B9986257700365E416D142A6EDC96DF03594A19E52A15F6BD0D041CD5D432F8ED42C55E33
        197A50C9EC00F1462B50C592211B1471A04B56088FDFD5F9"""),
    ),
    (  # SESSION_SETUP response 1 (MORE_PROCESSING_REQUIRED)
        h("""FE534D4240000100160000C00100010001000000000000000200000000000000FFFE000000000000
        190000000010000000000000000000000000000000000000090000004800B300A181B03081ADA003
        0A0101A10C060A2B06010401823702020AA281970481944E544C4D53535000020000000C000C0038
        00000015828AE20D1D8BA31179D008000000000000000050005000440000000A0092270000000F53
        005500540033003100310002000C0053005500540033003100310001000C00530055005400330031
        00310004000C0053005500540033003100310003000C0053005500540033003100310007000800A1
        A1F5ADCBAED00100000000"""),
        h("""2729E3440DFDDD839E37193F6E8F20C20CEFB3469E453A70CD980EEC06B8835740A7376008563336
        4C8989895ECE81BF102DEEB14D4B7D48AFA76901A7A38387"""),
    ),
    (  # SESSION_SETUP request 2 (NTLM AUTHENTICATE)
        h("""FE534D4240000100000000000100800000000000000000000300000000000000FFFE000000000000
        1900000000100000000000000000000000000000000000001900000101000000000000005800CF01
        0000000000000000A18201CB308201C7A0030A0101A28201AA048201A64E544C4D53535000030000
        001800180090000000EE00EE00A80000000C000C00580000001A001A0064000000120012007E0000
        001000100096010000158288E2060380250000000FECAC77A5F385A8BF9C38C706EEEDDCD3530055
        005400330031003100610064006D0069006E006900730074007200610074006F0072004400520049
        0056004500520033003100310000000000000000000000000000000000000000000000000063078E
        B639FE03E20A231C3AE3BF23080101000000000000A1A1F5ADCBAED001BC4AD05F223CC90F000000
        0002000C0053005500540033003100310001000C0053005500540033003100310004000C00530055
        00540033003100310003000C0053005500540033003100310007000800A1A1F5ADCBAED001060004
        00020000000800300030000000000000000000000000300000B61FEFCAA857EA57BF1EDCEBF8974B
        8E0EBA5A6DFD9D07A31D11B548F8C9D0CC0A00100000000000000000000000000000000000090016
        0063006900660073002F005300550054003300310031000000000000000000000000003B9BDFF38F
        5EE8F9663F11A0F4C03A78A31204100100000063775A9A5FD97F0600000000"""),
        h("""0DD13628CC3ED218EF9DF9772D436D0887AB9814BFAE63A80AA845F36909DB7928622DDDAD522D97
        51640A459762C5A9D6BB084CBB3CE6BDADEF5D5BCE3C6C01"""),
    ),
]


def test_preauth_hash_chain_matches_windows_trace():
    chain = PreauthHash()
    assert chain.value == b"\x00" * 64
    for message, expected in PREAUTH_MESSAGES:
        chain.update(message)
        assert chain.value == expected


def test_preauth_hash_copy_is_independent():
    connection = PreauthHash()
    connection.update(PREAUTH_MESSAGES[0][0])
    session = connection.copy()
    session.update(PREAUTH_MESSAGES[1][0])
    assert connection.value == PREAUTH_MESSAGES[0][1]
    assert session.value == PREAUTH_MESSAGES[1][1]


def test_311_signing_key_from_preauth_blog():
    keys = derive_session_keys(
        DIALECT_SMB_3_1_1, h("270E1BA896585EEB7AF3472D3B4C75A7"), PREAUTH_MESSAGES[-1][1], CIPHER_AES_128_GCM
    )
    assert keys.signing == h("73FE7A9A77BEF0BDE49C650D8CCB5F76")


# --- "Encryption in SMB 3.0: a protocol perspective" (AES-128-CCM) -------------------------

SMB30_SESSION_KEY = h("B4546771B515F766A86735532DD6C4F0")
SMB30_SESSION_ID = 0x8E40014000011
SMB30_CLIENT_WRITE = h("""FE534D4240000100000000000900400008000000000000000400000000000000
    FFFE0000010000001100001400E4080000000000000000000000000000000000
    3100700017000000000000000000000015010000390000020100000039020000
    00000000000000007000000000000000536D623320656E6372797074696F6E20
    74657374696E67""")
SMB30_CLIENT_WRITE_ENCRYPTED = h("""FD534D4281A286535415445DAE393921E44FA42E66E69A111892584FB5ED524A
    744DA3EE87000000000001001100001400E4080025C8FEE16605A437832D1CD5
    2DA9F4645333482A175FE5384563F45FCDAFAEF38BC62BA4D5C62897996625A4
    4C29BE5658DE2E6117585779E7B59FFD971278D08580D7FA899E410E910EABF5
    AA1DB43050B33B49182637759AC15D84BFCDF5B6B238993C0F4CF4D6012023F6
    C627297075D84B7803912D0A9639634453595EF3E33FFE4E7AC2AB""")
SMB30_SERVER_WRITE_RESPONSE = h("""FE534D4240000100000000000900210009000000000000000400000000000000
    FFFE0000010000001100001400E4080000000000000000000000000000000000
    11000000170000000000000000000000""")
SMB30_SERVER_WRITE_RESPONSE_ENCRYPTED = h("""FD534D42A6015530A18F6D9AFFE22AFAE8E66484860000000000000011000014
    00E4080050000000000001001100001400E40800DBF46435C5F14169293CE079
    E344479BF670227E49873F458672C3098DAC467DD5809F369D67409166515787
    1483E01F7BECD02064EAC3E235F913668BBC2F097980D4B378F1993EFF6E60D1
    77309E5B""")


@pytest.mark.parametrize("dialect", [DIALECT_SMB_3_0, DIALECT_SMB_3_0_2])
def test_30_keys_from_blog(dialect):
    keys = derive_session_keys(dialect, SMB30_SESSION_KEY, None, None)
    assert keys.decrypting == h("261B72350558F2E9DCF613070383EDBF")  # client's EncryptionKey
    assert keys.encrypting == h("8FE2B57EC34D2DB5B1A9727F526BBDB5")  # client's DecryptionKey


def test_30_server_decrypts_client_write():
    keys = derive_session_keys(DIALECT_SMB_3_0, SMB30_SESSION_KEY, None, None)
    header = parse_transform_header(SMB30_CLIENT_WRITE_ENCRYPTED)
    assert header.session_id == SMB30_SESSION_ID
    assert header.original_message_size == len(SMB30_CLIENT_WRITE)
    assert decrypt_message(CIPHER_AES_128_CCM, keys.decrypting, SMB30_CLIENT_WRITE_ENCRYPTED) == SMB30_CLIENT_WRITE


def test_30_server_encrypts_write_response_like_windows():
    keys = derive_session_keys(DIALECT_SMB_3_0, SMB30_SESSION_KEY, None, None)
    nonce_field = SMB30_SERVER_WRITE_RESPONSE_ENCRYPTED[20:36]
    out = encrypt_message(
        CIPHER_AES_128_CCM, keys.encrypting, SMB30_SESSION_ID, SMB30_SERVER_WRITE_RESPONSE, nonce_field
    )
    assert out == SMB30_SERVER_WRITE_RESPONSE_ENCRYPTED


# --- "SMB 3.1.1 Encryption in Windows 10" (AES-128-GCM) ------------------------------------

SMB311_SESSION_KEY = h("419FDDF34C1E001909D362AE7FB6AF79")
SMB311_PREAUTH = h("""B23F3CBFD69487D9832B79B1594A367CDD950909B774C3A4C412B4FCEA9EDDDBA7DB256BA2EA30E9
    77F11F9B113247578E0E915C6D2A513B8F2FCA5707DC8770""")
SMB311_SESSION_ID = 0x100000000025
SMB311_CLIENT_WRITE = h("""FE534D4240000100000000000900010008000000000000000500000000000000FFFE000001000000
    25000000001000000000000000000000000000000000000031007000170000000000000000000000
    0600000004000000010000000400000000000000000000007000000000000000536D623320656E63
    72797074696F6E2074657374696E67""")
SMB311_CLIENT_WRITE_ENCRYPTED = h("""FD534D42BD73D97D2BC9001BCAFAC0FDFF5FEEBCC7D6822D269CAF48904C664C0000000087000000
    0000010025000000001000006ECDD2A7AFC7B47763057A041B8FD4DAFFE990B70C9E09D36C084E02
    D14EF247F8BDE38ACF6256F8B1D3B56F77FBDEB312FEA5E92CBCC1ED8FB2EBBFAA75E49A4A394BB4
    4576545567C24D4C014D47C9FBDFDAFD2C4F9B72F8D256452620A299F48E29E53D6B61D1C13A19E9
    1AF013F00D17E3ABC2FC3D36C8C1B6B93973253852DBD442E46EE8""")
SMB311_SERVER_WRITE_RESPONSE = h("""FE534D4240000100000000000900010001000000000000000500000000000000FFFE000001000000
    25000000001000000000000000000000000000000000000011000000170000000000000000000000""")
SMB311_SERVER_WRITE_RESPONSE_ENCRYPTED = h("""
    FD534D42ACBE1CB7ED343ADF1725EF144D90D4B0E06831DD2E8EB7B4000000000000000050000000
    00000100250000000010000026BBBF949983A6C1C796559D0F2C510CB651D1F7B6AC8DED32A2A0B8
    F2D793A815C6F6B848D69767A215841A42D400AE6DDB5F0B44173A014973321FDD7950DA6179159B
    82E03C9E18A050FF0EA1C967""")


def test_311_keys_from_blog():
    keys = derive_session_keys(DIALECT_SMB_3_1_1, SMB311_SESSION_KEY, SMB311_PREAUTH, CIPHER_AES_128_GCM)
    assert keys.decrypting == h("A2F5E80E5D59103034F32E52F698E5EC")
    assert keys.encrypting == h("748C50868C90F302962A5C35F5F9A8BF")


def test_311_server_decrypts_client_write():
    keys = derive_session_keys(DIALECT_SMB_3_1_1, SMB311_SESSION_KEY, SMB311_PREAUTH, CIPHER_AES_128_GCM)
    assert parse_transform_header(SMB311_CLIENT_WRITE_ENCRYPTED).session_id == SMB311_SESSION_ID
    assert decrypt_message(CIPHER_AES_128_GCM, keys.decrypting, SMB311_CLIENT_WRITE_ENCRYPTED) == SMB311_CLIENT_WRITE


def test_311_server_encrypts_write_response_like_windows():
    keys = derive_session_keys(DIALECT_SMB_3_1_1, SMB311_SESSION_KEY, SMB311_PREAUTH, CIPHER_AES_128_GCM)
    nonce = SMB311_SERVER_WRITE_RESPONSE_ENCRYPTED[20:32]
    out = encrypt_message(CIPHER_AES_128_GCM, keys.encrypting, SMB311_SESSION_ID, SMB311_SERVER_WRITE_RESPONSE, nonce)
    assert out == SMB311_SERVER_WRITE_RESPONSE_ENCRYPTED


# --- Key derivation details ----------------------------------------------------------------


def test_kdf_matches_cryptography_kbkdf_for_both_lengths():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

    key = bytes(range(16))
    for length in (16, 32, 48):
        reference = KBKDFHMAC(
            algorithm=hashes.SHA256(), mode=Mode.CounterMode, length=length, rlen=4, llen=4,
            location=CounterLocation.BeforeFixed, label=b"SMBC2SCipherKey\x00", context=b"ctx", fixed=None,
        ).derive(key)
        assert kdf(key, b"SMBC2SCipherKey\x00", b"ctx", length) == reference


@pytest.mark.parametrize("cipher", [CIPHER_AES_256_CCM, CIPHER_AES_256_GCM])
def test_311_aes256_keys_match_smbprotocol(cipher):
    smbprotocol_session = pytest.importorskip("smbprotocol.session")
    session = smbprotocol_session.Session.__new__(smbprotocol_session.Session)
    full_key = bytes(range(32))
    keys = derive_session_keys(DIALECT_SMB_3_1_1, full_key, SMB311_PREAUTH, cipher)
    assert len(keys.encrypting) == len(keys.decrypting) == 32
    # smbprotocol is a client: its encryption key is our decryption key.
    assert keys.decrypting == session._smb3kdf(full_key, b"SMBC2SCipherKey\x00", SMB311_PREAUTH, length=32)
    assert keys.encrypting == session._smb3kdf(full_key, b"SMBS2CCipherKey\x00", SMB311_PREAUTH, length=32)
    assert keys.signing == session._smb3kdf(full_key[:16], b"SMBSigningKey\x00", SMB311_PREAUTH)
    assert keys.application == session._smb3kdf(full_key[:16], b"SMBAppKey\x00", SMB311_PREAUTH)


@pytest.mark.parametrize("dialect", [DIALECT_SMB_2_0_2, DIALECT_SMB_2_1])
def test_2x_signs_with_session_key_and_cannot_encrypt(dialect):
    keys = derive_session_keys(dialect, b"\x11" * 16, None, None)
    assert keys.signing == b"\x11" * 16
    assert keys.encrypting == keys.decrypting == b""


def test_short_session_key_is_zero_padded():
    assert derive_session_keys(DIALECT_SMB_2_1, b"\x01\x02", None, None).signing == b"\x01\x02" + b"\x00" * 14


def test_311_requires_preauth_hash():
    with pytest.raises(ValueError):
        derive_session_keys(DIALECT_SMB_3_1_1, b"\x00" * 16, None, CIPHER_AES_128_GCM)


def test_keys_are_not_in_repr():
    keys = derive_session_keys(DIALECT_SMB_3_0, SMB30_SESSION_KEY, None, None)
    assert keys.signing.hex() not in repr(keys).lower()


# --- Signing, cross-checked with smbprotocol's client implementation ----------------------


def _header(command: int, flags: int, message_id: int, body: bytes = b"") -> bytes:
    """An SMB2 sync header ([MS-SMB2] 2.2.1.2) with a non-zero Signature field."""
    return (
        struct.pack("<4sHHIHHIIQIIQ16s", b"\xfeSMB", 64, 1, 0, command, 1, flags, 0, message_id, 0, 1,
                    0x1122334455667788, b"\xaa" * 16)
        + body
    )


def _smbprotocol_signature(dialect, algorithm, key, message, response, command):
    connection_module = pytest.importorskip("smbprotocol.connection")
    connection = connection_module.Connection.__new__(connection_module.Connection)
    connection.dialect = dialect
    connection.signing_algorithm_id = algorithm
    return connection._generate_signature(message, key, struct.unpack_from("<Q", message, 24)[0], response, command)


SIGNING_CASES = [
    (DIALECT_SMB_2_0_2, SIGNING_HMAC_SHA256),
    (DIALECT_SMB_2_1, SIGNING_HMAC_SHA256),
    (DIALECT_SMB_3_0, SIGNING_AES_CMAC),
    (DIALECT_SMB_3_0_2, SIGNING_AES_CMAC),
    (DIALECT_SMB_3_1_1, SIGNING_AES_CMAC),
    (DIALECT_SMB_3_1_1, SIGNING_AES_GMAC),
]


@pytest.mark.parametrize("dialect,algorithm", SIGNING_CASES)
@pytest.mark.parametrize(
    "command,flags",
    [(0x0008, 0x00000000), (0x0008, 0x00000001), (0x000C, 0x00000000), (0x0005, 0x00000009)],
    ids=["read-request", "read-response", "cancel-request", "create-response-signed"],
)
def test_signature_matches_smbprotocol(dialect, algorithm, command, flags):
    key = bytes(range(0x40, 0x50))
    message = _header(command, flags, 0x0102030405060708, b"payload" * 37)
    expected = _smbprotocol_signature(dialect, algorithm, key, message, bool(flags & 1), command)
    assert sign(algorithm, key, message, dialect=dialect) == expected


def test_gmac_nonce_distinguishes_direction_and_cancel():
    key = bytes(range(16))
    request = _header(0x0008, 0, 7)
    response = _header(0x0008, 1, 7)
    cancel = _header(0x000C, 0, 7)
    signatures = {sign(SIGNING_AES_GMAC, key, m, dialect=DIALECT_SMB_3_1_1) for m in (request, response, cancel)}
    assert len(signatures) == 3


@pytest.mark.parametrize("dialect,algorithm", SIGNING_CASES)
def test_verify_signature_roundtrip_and_tamper(dialect, algorithm):
    key = bytes(range(16))
    message = bytearray(_header(0x0009, 0, 42, b"data" * 100))
    original = bytes(message)
    signature = sign(algorithm, key, message, dialect=dialect)
    assert bytes(message) == original  # input not mutated
    message[48:64] = signature
    assert verify_signature(algorithm, key, message, dialect=dialect)
    assert verify_signature(algorithm, key, memoryview(message), dialect=dialect)
    message[-1] ^= 0x01
    assert not verify_signature(algorithm, key, message, dialect=dialect)


def test_signing_ignores_existing_signature_field():
    key = bytes(range(16))
    a = _header(0x0008, 0, 1, b"x")
    b = a[:48] + b"\x55" * 16 + a[64:]
    signature_a = sign(SIGNING_AES_CMAC, key, a, dialect=DIALECT_SMB_3_0)
    assert signature_a == sign(SIGNING_AES_CMAC, key, b, dialect=DIALECT_SMB_3_0)


def test_signing_rejects_short_message_and_gmac_before_311():
    with pytest.raises(ProtocolViolation):
        sign(SIGNING_AES_CMAC, b"\x00" * 16, b"\xfeSMB" + b"\x00" * 20, dialect=DIALECT_SMB_3_0)
    with pytest.raises(ProtocolViolation):
        verify_signature(SIGNING_AES_CMAC, b"\x00" * 16, b"", dialect=DIALECT_SMB_3_0)
    with pytest.raises(ValueError):
        sign(SIGNING_AES_GMAC, b"\x00" * 16, _header(1, 0, 1), dialect=DIALECT_SMB_3_0_2)


# --- Encryption: interop with smbprotocol, round trips, malformed input -------------------

ALL_CIPHERS = [CIPHER_AES_128_CCM, CIPHER_AES_128_GCM, CIPHER_AES_256_CCM, CIPHER_AES_256_GCM]


@pytest.mark.parametrize("cipher", ALL_CIPHERS)
def test_decrypts_what_smbprotocol_encrypts(cipher):
    connection_module = pytest.importorskip("smbprotocol.connection")
    connection = connection_module.Connection.__new__(connection_module.Connection)
    connection.dialect = DIALECT_SMB_3_1_1
    connection.cipher_id = cipher
    key_length = 32 if cipher in (CIPHER_AES_256_CCM, CIPHER_AES_256_GCM) else 16

    class FakeSession:
        session_id = 0x0000400000000021
        encryption_key = bytes(range(key_length))

    message = _header(0x0009, 0, 99, b"hello encrypted world" * 10)
    transformed = connection._encrypt(message, FakeSession()).pack()
    assert parse_transform_header(transformed).session_id == FakeSession.session_id
    assert decrypt_message(cipher, FakeSession.encryption_key, transformed) == message


@pytest.mark.parametrize("cipher", ALL_CIPHERS)
def test_smbprotocol_decrypts_what_we_encrypt(cipher):
    connection_module = pytest.importorskip("smbprotocol.connection")
    key_length = 32 if cipher in (CIPHER_AES_256_CCM, CIPHER_AES_256_GCM) else 16
    key = bytes(range(100, 100 + key_length))

    class FakeSession:
        decryption_key = key

    connection = connection_module.Connection.__new__(connection_module.Connection)
    connection.dialect = DIALECT_SMB_3_1_1
    connection.cipher_id = cipher
    connection.session_table = {0x55: FakeSession()}
    message = _header(0x0008, 1, 3, b"response body" * 11)
    transformed = encrypt_message(cipher, key, 0x55, message)
    parsed = connection_module.SMB2TransformHeader()
    parsed.unpack(transformed)
    assert connection._decrypt(parsed) == message


@settings(max_examples=40, deadline=None)
@given(
    cipher=st.sampled_from(ALL_CIPHERS),
    plaintext=st.binary(min_size=1, max_size=300),
    session_id=st.integers(min_value=0, max_value=2**64 - 1),
    flip=st.integers(min_value=0, max_value=10_000),
)
def test_roundtrip_and_any_single_bit_flip_is_rejected(cipher, plaintext, session_id, flip):
    key = bytes(32 if cipher in (CIPHER_AES_256_CCM, CIPHER_AES_256_GCM) else 16)
    data = encrypt_message(cipher, key, session_id, plaintext)
    assert len(data) == TRANSFORM_HEADER_SIZE + len(plaintext)
    assert decrypt_message(cipher, key, data) == plaintext
    tampered = bytearray(data)
    # Any byte from Signature onward is authenticated (ProtocolId is checked separately).
    position = 4 + flip % (len(data) - 4)
    tampered[position] ^= 0x01
    with pytest.raises(DecryptError):
        decrypt_message(cipher, key, bytes(tampered))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_only_raises_decrypt_error(data):
    try:
        decrypt_message(CIPHER_AES_128_GCM, b"\x00" * 16, data)
    except DecryptError:
        pass
    else:  # pragma: no cover - would mean a forgery
        pytest.fail("garbage decrypted")


def test_decrypt_rejects_malformed_headers():
    key = b"\x01" * 16
    good = encrypt_message(CIPHER_AES_128_GCM, key, 1, b"x" * 80)
    with pytest.raises(DecryptError):
        decrypt_message(CIPHER_AES_128_GCM, key, good[:51])
    with pytest.raises(DecryptError):
        decrypt_message(CIPHER_AES_128_GCM, key, b"\xfeSMB" + good[4:])
    with pytest.raises(DecryptError):  # Flags != 1
        decrypt_message(CIPHER_AES_128_GCM, key, good[:42] + b"\x02\x00" + good[44:])
    with pytest.raises(DecryptError):  # OriginalMessageSize does not match
        decrypt_message(CIPHER_AES_128_GCM, key, good[:-1])
    with pytest.raises(DecryptError):  # wrong key
        decrypt_message(CIPHER_AES_128_GCM, b"\x02" * 16, good)
    with pytest.raises(ValueError):  # caller error: key size
        decrypt_message(CIPHER_AES_256_GCM, key, good)


def test_random_nonces_differ_and_unused_nonce_bytes_are_zero():
    key = b"\x03" * 16
    a = encrypt_message(CIPHER_AES_128_CCM, key, 1, b"same")
    b = encrypt_message(CIPHER_AES_128_CCM, key, 1, b"same")
    assert a[20:36] != b[20:36]
    assert a[31:36] == b"\x00" * 5
    g = encrypt_message(CIPHER_AES_128_GCM, key, 1, b"same")
    assert g[32:36] == b"\x00" * 4
