"""The two kinds of failure of the SMB Direct core, split the way h11 splits them.

* :class:`SmbdProtocolError` - the *peer* broke [MS-SMBD]: a malformed message, a
  send without a credit, a fragment train that overflows MaxFragmentedSize...
  [MS-SMBD] 3.1.5.6/3.1.5.8 say "the receiver MUST terminate the connection";
  the caller closes that one connection and nothing else.
* :class:`SmbdLocalError` - *our* caller misused the core (sending before the
  negotiation finished, a message larger than the peer accepts, more receive
  completions than receives posted...).  That is a bug on this side, so it is a
  RuntimeError and is never mapped to anything on the wire.
"""
from __future__ import annotations

from smbd.status import ProtocolViolation


class SmbdProtocolError(ProtocolViolation):
    """The peer violated [MS-SMBD]; drop this connection."""


class SmbdLocalError(RuntimeError):
    """The local caller used the SMB Direct core in a way it does not allow."""
