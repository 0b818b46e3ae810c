"""What the SMB Direct core asks its driver (the RDMA proxy) to do, and what it reports.

The core never touches a queue pair: it returns these events from
:meth:`SmbdConnection.events` and the driver carries them out in order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union


@dataclass(frozen=True, slots=True)
class NegotiatedParams:
    """The connection's limits once [MS-SMBD] 3.1.5.6 processing is done (3.1.1.1 names).

    ``max_send_size``/``max_receive_size`` bound one SMB Direct message each way;
    ``max_fragmented_send_size`` bounds one upper-layer message we send (the peer's
    reassembly limit), ``max_fragmented_recv_size`` the one we accept;
    ``max_read_write_size`` is what we offered for one RDMA read/write.
    """

    max_send_size: int
    max_receive_size: int
    max_fragmented_send_size: int
    max_fragmented_recv_size: int
    max_read_write_size: int
    peer_credits_requested: int
    credits_granted: int


@dataclass(frozen=True, slots=True)
class PostSend:
    """Post exactly one RDMA SEND carrying ``payload`` (one whole SMB Direct message).

    When ``invalidate_rkey`` is not None, post it as SEND_WITH_INVALIDATE of that rkey
    ([MS-SMBD] 3.1.5.1: the token of the peer's buffer descriptor that the upper layer
    is done with).  Report its completion with ``send_completed()``; a ``tag`` says that this
    completion means the whole tagged message has been acknowledged by the peer's NIC.
    """

    payload: bytes
    invalidate_rkey: Optional[int] = None
    tag: Optional[int] = None  # the message's ``send_message(tag=)``, on its last fragment only


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A complete, reassembled upper-layer (SMB2) message from the peer."""

    smb2: bytes


@dataclass(frozen=True, slots=True)
class NegotiateDone:
    """The negotiate response is queued (the PostSend before this event); data may flow."""

    params: NegotiatedParams


@dataclass(frozen=True, slots=True)
class PostReceives:
    """Post ``count`` more receive buffers than usual, if the driver has spares.

    Asked for when a send is blocked on the last-credit rule and every posted receive
    is already granted ([MS-SMBD] 3.1.5.9: "the sender MUST allocate and post at least
    one receive").  Report them with ``receive_reposted()``; if none can be posted the
    send simply waits for the peer's next message.
    """

    count: int


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Disconnect this connection after posting the sends queued before this event."""

    reason: str


Event = Union[PostSend, PostReceives, MessageReceived, NegotiateDone, CloseConnection]
