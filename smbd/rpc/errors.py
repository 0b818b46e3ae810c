"""Errors of the DCE/RPC layer.

Malformed input raises :class:`RpcProtocolError` (a ``ValueError``): the PDU framing is broken
(C706 12.6) and the pipe cannot go on. :class:`NdrError`, also a ``ValueError``, means one
call's stub data did not decode (C706 ch. 14); that call gets a fault PDU and the
association lives on. Neither ever lets an ``IndexError`` or ``struct.error`` escape.
"""
from __future__ import annotations


class RpcProtocolError(ValueError):
    """A connection-oriented PDU is malformed (bad version, lengths, fragment order)."""


class NdrError(ValueError):
    """Stub data is not valid NDR for the call (truncated, bad counts, bad pointers)."""
