"""Small helpers shared by the MS-FSCC encoders (pure functions)."""
from __future__ import annotations


def utf16(name: str) -> bytes:
    """UTF-16LE wire form of a name (MS-FSCC 2.1.5: names are Unicode, no terminator).

    Names from the filesystem may carry lone surrogates (undecodable bytes escaped by
    ``os.fsdecode``); ``surrogatepass`` keeps them encodable instead of failing a whole listing.
    """
    return name.encode("utf-16-le", "surrogatepass")


def align8(n: int) -> int:
    return (n + 7) & ~7
