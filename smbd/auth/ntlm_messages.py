"""NTLMSSP wire structures ([MS-NLMP] 2.2): the three messages, AV pairs, NTLMv2 response.

Parsing validates every field descriptor (length, offset) against the message and
raises :class:`NtlmFormatError` (a ValueError) on malformed input; nothing else escapes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

NTLMSSP_SIGNATURE = b"NTLMSSP\x00"
MESSAGE_NEGOTIATE = 1
MESSAGE_CHALLENGE = 2
MESSAGE_AUTHENTICATE = 3


class NegotiateFlags:
    """NTLMSSP NegotiateFlags bits ([MS-NLMP] 2.2.2.5)."""

    UNICODE = 0x00000001
    OEM = 0x00000002
    REQUEST_TARGET = 0x00000004
    SIGN = 0x00000010
    SEAL = 0x00000020
    DATAGRAM = 0x00000040
    LM_KEY = 0x00000080
    NTLM = 0x00000200
    ANONYMOUS = 0x00000800
    OEM_DOMAIN_SUPPLIED = 0x00001000
    OEM_WORKSTATION_SUPPLIED = 0x00002000
    ALWAYS_SIGN = 0x00008000
    TARGET_TYPE_DOMAIN = 0x00010000
    TARGET_TYPE_SERVER = 0x00020000
    EXTENDED_SESSIONSECURITY = 0x00080000
    IDENTIFY = 0x00100000
    REQUEST_NON_NT_SESSION_KEY = 0x00400000
    TARGET_INFO = 0x00800000
    VERSION = 0x02000000
    NEGOTIATE_128 = 0x20000000
    KEY_EXCH = 0x40000000
    NEGOTIATE_56 = 0x80000000


class AvId:
    """AV_PAIR AvId values ([MS-NLMP] 2.2.2.1)."""

    EOL = 0
    NB_COMPUTER_NAME = 1
    NB_DOMAIN_NAME = 2
    DNS_COMPUTER_NAME = 3
    DNS_DOMAIN_NAME = 4
    DNS_TREE_NAME = 5
    FLAGS = 6
    TIMESTAMP = 7
    SINGLE_HOST = 8
    TARGET_NAME = 9
    CHANNEL_BINDINGS = 10


# MsvAvFlags bits ([MS-NLMP] 2.2.2.1).
AV_FLAG_MIC_PRESENT = 0x00000002


class NtlmFormatError(ValueError):
    """An NTLMSSP message is malformed (truncated, bad signature/type, field out of bounds)."""


_PREFIX = struct.Struct("<8sI")  # Signature, MessageType
_FIELD = struct.Struct("<HHI")  # Len, MaxLen, BufferOffset ([MS-NLMP] 2.2.1.1 "Fields")
_AV_HEADER = struct.Struct("<HH")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

VERSION_SIZE = 8
MIC_SIZE = 16


def _check_prefix(data: bytes, expected_type: int, minimum: int) -> None:
    if len(data) < minimum:
        raise NtlmFormatError("NTLMSSP message truncated")
    signature, message_type = _PREFIX.unpack_from(data, 0)
    if signature != NTLMSSP_SIGNATURE:
        raise NtlmFormatError("missing NTLMSSP signature")
    if message_type != expected_type:
        raise NtlmFormatError(f"expected NTLMSSP message type {expected_type}, got {message_type}")


def _read_field(data: bytes, descriptor_offset: int) -> tuple[bytes, int]:
    """Return (payload, offset) of the Len/MaxLen/Offset descriptor at ``descriptor_offset``."""
    length, _max_length, offset = _FIELD.unpack_from(data, descriptor_offset)
    if length == 0:
        return b"", 0
    if offset + length > len(data):
        raise NtlmFormatError("NTLMSSP field points outside the message")
    return bytes(data[offset:offset + length]), offset


def decode_string(raw: bytes, unicode: bool) -> str:
    """Decode a name field: UTF-16LE when UNICODE was negotiated, else the OEM code page."""
    if unicode:
        if len(raw) % 2:
            raise NtlmFormatError("odd-length UTF-16 string")
        return raw.decode("utf-16-le", errors="replace")
    return raw.decode("latin-1")


# --- AV pairs -------------------------------------------------------------------------------


def parse_av_pairs(data: bytes) -> dict[int, bytes]:
    """Parse an AV_PAIR list ([MS-NLMP] 2.2.2.1) up to MsvAvEOL; the first of each id wins.

    A list that runs off the end of the buffer is malformed.  A list without MsvAvEOL is
    tolerated at the very end of the buffer (some clients pad the blob).
    """
    pairs: dict[int, bytes] = {}
    offset = 0
    while offset + _AV_HEADER.size <= len(data):
        av_id, av_len = _AV_HEADER.unpack_from(data, offset)
        offset += _AV_HEADER.size
        if av_id == AvId.EOL:
            return pairs
        if offset + av_len > len(data):
            raise NtlmFormatError("AV pair runs past the end of the list")
        pairs.setdefault(av_id, bytes(data[offset:offset + av_len]))
        offset += av_len
    return pairs


def encode_av_pairs(pairs: list[tuple[int, bytes]]) -> bytes:
    """Encode AV pairs followed by MsvAvEOL."""
    out = bytearray()
    for av_id, value in pairs:
        out += _AV_HEADER.pack(av_id, len(value)) + value
    out += _AV_HEADER.pack(AvId.EOL, 0)
    return bytes(out)


# --- NEGOTIATE_MESSAGE ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NegotiateMessage:
    """NEGOTIATE_MESSAGE ([MS-NLMP] 2.2.1.1); only the flags matter to the server."""

    flags: int
    raw: bytes = field(repr=False)

    _FIXED = struct.Struct("<8sII")  # Signature, MessageType, NegotiateFlags

    @classmethod
    def parse(cls, data: bytes) -> "NegotiateMessage":
        data = bytes(data)
        # Old clients send only Signature/MessageType/Flags, so 16 bytes is the minimum.
        _check_prefix(data, MESSAGE_NEGOTIATE, cls._FIXED.size)
        (_sig, _type, flags) = cls._FIXED.unpack_from(data, 0)
        return cls(flags=flags, raw=data)


# --- CHALLENGE_MESSAGE ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChallengeMessage:
    """CHALLENGE_MESSAGE ([MS-NLMP] 2.2.1.2), built by the server.

    Layout: Signature, MessageType, TargetNameFields, NegotiateFlags, ServerChallenge,
    Reserved(8), TargetInfoFields, Version, then the payload (TargetName, TargetInfo).
    """

    flags: int
    server_challenge: bytes
    target_name: bytes  # already encoded (UTF-16LE)
    target_info: bytes  # encoded AV pairs
    version: bytes

    _FIXED = struct.Struct("<8sI8sI8s8s8s8s")
    HEADER_SIZE = 56

    def to_bytes(self) -> bytes:
        if len(self.server_challenge) != 8 or len(self.version) != VERSION_SIZE:
            raise ValueError("server challenge and version must be 8 bytes")
        name_offset = self.HEADER_SIZE
        info_offset = name_offset + len(self.target_name)
        return (
            self._FIXED.pack(
                NTLMSSP_SIGNATURE,
                MESSAGE_CHALLENGE,
                _FIELD.pack(len(self.target_name), len(self.target_name), name_offset),
                self.flags,
                self.server_challenge,
                b"\x00" * 8,
                _FIELD.pack(len(self.target_info), len(self.target_info), info_offset),
                self.version,
            )
            + self.target_name
            + self.target_info
        )


assert ChallengeMessage._FIXED.size == ChallengeMessage.HEADER_SIZE


def make_version(major: int, minor: int, build: int) -> bytes:
    """VERSION structure ([MS-NLMP] 2.2.2.10) with NTLMSSP_REVISION_W2K3 (15)."""
    return struct.pack("<BBH3sB", major, minor, build, b"\x00" * 3, 0x0F)


# --- AUTHENTICATE_MESSAGE -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticateMessage:
    """AUTHENTICATE_MESSAGE ([MS-NLMP] 2.2.1.3).

    Fixed part: Signature, MessageType, then six field descriptors (LmChallengeResponse,
    NtChallengeResponse, DomainName, UserName, Workstation, EncryptedRandomSessionKey),
    NegotiateFlags; optional Version (8) and MIC (16) at offsets 64 and 72 when the
    payload starts late enough to leave room for them.
    """

    flags: int
    lm_response: bytes = field(repr=False)
    nt_response: bytes = field(repr=False)
    domain: str
    user: str
    workstation: str
    encrypted_random_session_key: bytes = field(repr=False)
    mic: bytes | None = field(repr=False)  # the 16 bytes at offset 72, if there is room
    raw: bytes = field(repr=False)

    FIXED_SIZE = 64
    MIC_OFFSET = 72

    @classmethod
    def parse(cls, data: bytes) -> "AuthenticateMessage":
        data = bytes(data)
        _check_prefix(data, MESSAGE_AUTHENTICATE, cls.FIXED_SIZE)
        fields = [_read_field(data, 12 + 8 * i) for i in range(6)]
        (flags,) = _U32.unpack_from(data, 60)
        unicode = bool(flags & NegotiateFlags.UNICODE)
        payload_offsets = [offset for payload, offset in fields if payload]
        payload_start = min(payload_offsets, default=len(data))
        if payload_start < cls.FIXED_SIZE:
            raise NtlmFormatError("AUTHENTICATE payload overlaps its fixed part")
        mic = None
        if payload_start >= cls.MIC_OFFSET + MIC_SIZE and len(data) >= cls.MIC_OFFSET + MIC_SIZE:
            mic = data[cls.MIC_OFFSET:cls.MIC_OFFSET + MIC_SIZE]
        return cls(
            flags=flags,
            lm_response=fields[0][0],
            nt_response=fields[1][0],
            domain=decode_string(fields[2][0], unicode),
            user=decode_string(fields[3][0], unicode),
            workstation=decode_string(fields[4][0], unicode),
            encrypted_random_session_key=fields[5][0],
            mic=mic,
            raw=data,
        )

    def with_zeroed_mic(self) -> bytes:
        """The message with its MIC field zeroed, as the MIC is computed over it."""
        return self.raw[:self.MIC_OFFSET] + b"\x00" * MIC_SIZE + self.raw[self.MIC_OFFSET + MIC_SIZE:]


# --- NTLMv2_RESPONSE ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ntlmv2Response:
    """NTLMv2_RESPONSE ([MS-NLMP] 2.2.2.8) and its NTLMv2_CLIENT_CHALLENGE blob (2.2.2.7).

    ``blob`` is everything after NTProofStr (the "temp" of [MS-NLMP] 3.3.2), which the
    proof is computed over, including any trailing padding the client sent.
    """

    nt_proof_str: bytes = field(repr=False)
    blob: bytes = field(repr=False)
    timestamp: int
    client_challenge: bytes
    av_pairs: dict[int, bytes]

    # RespType, HiRespType, Reserved1, Reserved2, TimeStamp, ChallengeFromClient, Reserved3
    _BLOB_HEADER = struct.Struct("<BBHIQ8sI")
    PROOF_SIZE = 16

    @classmethod
    def parse(cls, nt_response: bytes) -> "Ntlmv2Response":
        if len(nt_response) < cls.PROOF_SIZE + cls._BLOB_HEADER.size:
            raise NtlmFormatError("NTLMv2 response too short")
        blob = nt_response[cls.PROOF_SIZE:]
        resp_type, hi_resp_type, _r1, _r2, timestamp, client_challenge, _r3 = cls._BLOB_HEADER.unpack_from(blob, 0)
        if resp_type != 1 or hi_resp_type != 1:
            raise NtlmFormatError("unknown NTLMv2 client challenge version")
        return cls(
            nt_proof_str=nt_response[:cls.PROOF_SIZE],
            blob=blob,
            timestamp=timestamp,
            client_challenge=client_challenge,
            av_pairs=parse_av_pairs(blob[cls._BLOB_HEADER.size:]),
        )

    @property
    def av_flags(self) -> int:
        raw = self.av_pairs.get(AvId.FLAGS, b"")
        return _U32.unpack(raw)[0] if len(raw) == 4 else 0


def filetime(unix_seconds: float) -> int:
    """Windows FILETIME (100 ns ticks since 1601-01-01) for MsvAvTimestamp."""
    return int((unix_seconds + 11644473600) * 10_000_000)


def encode_filetime(unix_seconds: float) -> bytes:
    return _U64.pack(filetime(unix_seconds))
