"""A minimal ASN.1 DER reader/writer (ITU-T X.690), enough for SPNEGO tokens.

Only single-byte tags and definite lengths of up to 4 length bytes are accepted: that
covers every SPNEGO/GSS-API token, and anything else in an authentication token is
garbage.  Every length is checked against the enclosing buffer; errors raise
:class:`DerError` (a ValueError).
"""
from __future__ import annotations

from dataclasses import dataclass

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_GENERAL_STRING = 0x1B
TAG_SEQUENCE = 0x30
TAG_APPLICATION_0 = 0x60  # [APPLICATION 0] constructed: GSS-API InitialContextToken

_MAX_LENGTH_BYTES = 4


class DerError(ValueError):
    """Malformed DER: truncated, indefinite or oversized length, unexpected tag."""


def context_tag(number: int) -> int:
    """Tag byte of a constructed context-specific [number] (explicit tagging)."""
    if not 0 <= number <= 30:
        raise ValueError("context tag number out of range")
    return 0xA0 | number


@dataclass(frozen=True, slots=True)
class Tlv:
    """One element: its tag, the whole encoding (``raw``) and its ``content``."""

    tag: int
    raw: bytes
    content: bytes


def read_tlv(data: bytes, offset: int = 0) -> tuple[Tlv, int]:
    """Read the element starting at ``offset``; return it and the offset after it."""
    end_of_data = len(data)
    if offset + 2 > end_of_data:
        raise DerError("truncated element header")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError("multi-byte tags are not supported")
    first = data[offset + 1]
    position = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise DerError("indefinite length is not DER")
        if count > _MAX_LENGTH_BYTES:
            raise DerError("length field too long")
        if position + count > end_of_data:
            raise DerError("truncated length field")
        length = int.from_bytes(data[position:position + count], "big")
        position += count
    end = position + length
    if end > end_of_data:
        raise DerError("element runs past the end of its container")
    return Tlv(tag, bytes(data[offset:end]), bytes(data[position:end])), end


def read_single(data: bytes, expected_tag: int | None = None) -> Tlv:
    """Read exactly one element spanning all of ``data``."""
    tlv, end = read_tlv(data, 0)
    if end != len(data):
        raise DerError("trailing bytes after element")
    if expected_tag is not None and tlv.tag != expected_tag:
        raise DerError(f"expected tag {expected_tag:#04x}, got {tlv.tag:#04x}")
    return tlv


def read_children(content: bytes) -> list[Tlv]:
    """Split a constructed element's content into its elements."""
    children = []
    offset = 0
    while offset < len(content):
        tlv, offset = read_tlv(content, offset)
        children.append(tlv)
    return children


def encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    if len(body) > _MAX_LENGTH_BYTES:
        raise ValueError("element too long")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + encode_length(len(content)) + content


def encode_sequence(*elements: bytes) -> bytes:
    return encode(TAG_SEQUENCE, b"".join(elements))


def encode_oid(dotted: str) -> bytes:
    """OBJECT IDENTIFIER element from "1.3.6.1..." (X.690 8.19)."""
    arcs = [int(part) for part in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2:
        raise ValueError(f"bad OID {dotted!r}")
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return encode(TAG_OID, bytes(body))


def decode_oid(content: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's content octets."""
    if not content or content[-1] & 0x80:
        raise DerError("malformed OID")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(arc) for arc in head + arcs[1:])


def decode_enumerated(content: bytes) -> int:
    if not 1 <= len(content) <= 4:
        raise DerError("bad ENUMERATED length")
    return int.from_bytes(content, "big", signed=True)
