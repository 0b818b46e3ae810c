"""Server side of an [MS-SMBD] connection as a sans-IO state machine.

The driver (the RDMA proxy) feeds it what happened on the queue pair and time, and
pulls :mod:`events <smbdd.smbdirect.events>` telling it what to post:

* ``receive_reposted(n)`` - n receive buffers (each ``config.max_receive_size``) are
  posted.  Credits granted to the peer never exceed the receives actually posted.
* ``receive(data, now)`` - one receive completed with ``data``.  The core copies what it
  keeps, so the driver can repost that buffer right away (and say so).
* ``send_message(smb2, invalidate_token=None)`` - queue one SMB2 message for the peer.
* ``send_completed(n)`` - n of our PostSend completed (their buffers are free).
* ``timer(now)`` - time passed; ``next_deadline()`` says when to call it next.

Credit model ([MS-SMBD] 3.1.1.1 names):

* ``send_credits`` (SendCredits) - messages we may still send; each send uses one, the
  peer grants more in CreditsGranted.  The last one is only spent on a message that
  grants credits (3.1.5.1), so both sides can never be left unable to grant.
* ``receive_credits`` (ReceiveCredits) - messages the peer may still send us; always
  <= ``posted_receives``.  New credits are granted in the next message we send
  (3.1.5.9); if we have nothing to send and the peer runs low, an empty message is sent
  just to carry them.

Errors: :class:`SmbdProtocolError` from ``receive()`` when the peer misbehaves (the
connection is then CLOSED and ``events()`` ends with :class:`CloseConnection`, after any
send that must still go out, such as a NOT_SUPPORTED negotiate response);
:class:`SmbdLocalError` when the driver misuses the core.
"""
from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Optional

from smbd.status import NtStatus

from .errors import SmbdLocalError, SmbdProtocolError
from .events import (CloseConnection, Event, MessageReceived, NegotiateDone,
                     NegotiatedParams, PostReceives, PostSend)
from .wire import (DATA_TRANSFER_DATA_OFFSET, MIN_FRAGMENTED_SIZE, MIN_RECEIVE_SIZE,
                   SMB_DIRECT_RESPONSE_REQUESTED, SMBD_VERSION_1, Buffer,
                   DataTransferHeader, NegotiateRequest, NegotiateResponse,
                   build_data_transfer)


@dataclass(frozen=True, slots=True)
class SmbdConfig:
    """Local limits, [MS-SMBD] 3.1.1.1 (defaults are those of ksmbd and cifs.ko).

    ``max_fragmented_size`` is Connection.MaxFragmentedRecvSize: the largest SMB2 message
    we reassemble.  ``keepalive_timeout`` is how long a keepalive may stay unanswered
    (cifs.ko waits 5 s); ``negotiate_timeout`` how long the first message may take.
    ``grant_low_watermark``: when the peer holds this many credits or fewer (at most a
    quarter of what it asked for), we have nothing to send and can at least double its
    credits, an empty message carries new credits at once instead of waiting for the next
    response (ksmbd uses receive_credit_max / 8).  See ``_schedule_grant_if_peer_low``.
    ``max_sends_in_flight`` bounds our posted, uncompleted sends (the send queue depth).
    """

    receive_credit_max: int = 255
    send_credit_target: int = 255
    max_send_size: int = 1364
    max_receive_size: int = 1364
    max_fragmented_size: int = 1048576
    max_read_write_size: int = 1048576
    keepalive_interval: float = 120.0
    keepalive_timeout: float = 5.0
    negotiate_timeout: float = 120.0
    grant_low_watermark: int = 31
    max_sends_in_flight: int = 255

    def __post_init__(self) -> None:
        if not 1 <= self.receive_credit_max <= 0xFFFF or not 1 <= self.send_credit_target <= 0xFFFF:
            raise ValueError("credit limits must be 1..65535")
        if self.max_receive_size < MIN_RECEIVE_SIZE or self.max_send_size < MIN_RECEIVE_SIZE:
            raise ValueError(f"message sizes must be at least {MIN_RECEIVE_SIZE}")
        if self.max_fragmented_size < MIN_FRAGMENTED_SIZE:
            raise ValueError(f"max_fragmented_size must be at least {MIN_FRAGMENTED_SIZE}")
        if self.max_sends_in_flight < 1 or self.keepalive_interval <= 0 or self.keepalive_timeout <= 0:
            raise ValueError("max_sends_in_flight and timers must be positive")


class State(enum.Enum):
    AWAIT_NEGOTIATE = "await-negotiate"          # nothing received yet
    NEGOTIATE_RESPONDING = "negotiate-responding"  # request accepted, waiting for a receive to grant
    ESTABLISHED = "established"
    CLOSED = "closed"


class Keepalive(enum.Enum):
    """Connection.KeepaliveRequested of [MS-SMBD] 3.1.1.1, for *our* keepalives."""

    NONE = "none"
    PENDING = "pending"   # due, not yet sent (e.g. waiting for a send credit)
    SENT = "sent"         # sent with RESPONSE_REQUESTED, waiting for any message back


class _Outgoing:
    """One queued SMB2 message and how much of it is already fragmented out."""

    __slots__ = ("data", "sent", "invalidate_rkey", "tag")

    def __init__(self, data: memoryview, invalidate_rkey: Optional[int], tag: Optional[int] = None):
        self.data = data
        self.sent = 0
        self.invalidate_rkey = invalidate_rkey
        self.tag = tag


class SmbdConnection:
    """One SMB Direct connection, server (listener) role.  See the module docstring."""

    def __init__(self, config: SmbdConfig | None = None, *, now: float):
        self.config = config or SmbdConfig()
        self.state = State.AWAIT_NEGOTIATE
        self.params: NegotiatedParams | None = None
        self._events: list[Event] = []
        self._now = now
        self._negotiate_deadline = now + self.config.negotiate_timeout

        self.posted_receives = 0
        self.receive_credits = 0
        self.send_credits = 0
        self.sends_in_flight = 0
        self._receive_credit_target = 1
        self._send_queue: deque[_Outgoing] = deque()
        self._send_immediate = False
        self._credit_request_outstanding = False
        self._extra_receive_requested = False

        self._last_receive = now
        self._keepalive = Keepalive.NONE
        self._keepalive_deadline = 0.0

        self._reassembly = bytearray()
        self._reassembly_expect_remaining: int | None = None  # None: not inside a fragment train

        # Negotiated limits (meaningful once ESTABLISHED).
        self._max_send_size = 0
        self._max_receive_size = self.config.max_receive_size
        self._max_fragmented_send_size = 0

    # ------------------------------------------------------------------ driver inputs

    def events(self) -> list[Event]:
        """Everything the driver must do, in order; the list is handed over and cleared."""
        out, self._events = self._events, []
        return out

    def receive_reposted(self, n: int = 1) -> None:
        """``n`` more receive buffers are posted on the queue pair."""
        if n < 0:
            raise SmbdLocalError("receive_reposted: negative count")
        if self.state is State.CLOSED:
            return
        self.posted_receives += n
        if n:
            self._extra_receive_requested = False
        if self.state is State.NEGOTIATE_RESPONDING:
            self._try_send_negotiate_response()
        elif self.state is State.ESTABLISHED:
            self._schedule_grant_if_peer_low()
            self._pump_sends()

    def receive(self, data: Buffer, now: float) -> None:
        """One receive completed carrying ``data`` (one whole SMB Direct message)."""
        if self.state is State.CLOSED:
            raise SmbdLocalError("receive() on a closed SMB Direct connection")
        if self.posted_receives <= 0:
            raise SmbdLocalError("receive() without a posted receive: call receive_reposted() first")
        self.posted_receives -= 1
        self._now = now
        handler = self._RECEIVE_HANDLERS[self.state]
        try:
            handler(self, data)
        except SmbdProtocolError as exc:
            self._close(f"protocol error: {exc}")
            raise

    def send_message(self, smb2: Buffer, *, invalidate_token: int | None = None,
                     tag: int | None = None) -> None:
        """Queue one upper-layer message; it leaves as one or more PostSend fragments.

        ``invalidate_token``: the rkey the peer asked us to invalidate with the last
        fragment (SMB2_CHANNEL_RDMA_V1_INVALIDATE, [MS-SMB2] 3.3.5.12/3.3.5.13).
        ``tag``: carried by the PostSend of the last fragment, so the driver can tell when
        the whole message has been acknowledged (sends complete in order on one QP).
        """
        if self.state is not State.ESTABLISHED:
            raise SmbdLocalError(f"send_message() in state {self.state.value}")
        # bytes are immutable, so fragments can be cut from it without a copy; a mutable
        # buffer is copied once so a caller reusing it cannot corrupt queued fragments.
        view = memoryview(smb2 if isinstance(smb2, bytes) else bytes(smb2))
        if not len(view):
            raise SmbdLocalError("send_message() of an empty message")
        if len(view) > self._max_fragmented_send_size:
            raise SmbdLocalError(
                f"message of {len(view)} bytes exceeds the peer's MaxFragmentedSize "
                f"{self._max_fragmented_send_size}")
        self._send_queue.append(_Outgoing(view, invalidate_token, tag))
        self._pump_sends()

    def send_completed(self, n: int = 1) -> None:
        """``n`` posted sends completed; their send buffers may be reused."""
        if n < 0 or n > self.sends_in_flight:
            raise SmbdLocalError(f"send_completed({n}) with {self.sends_in_flight} sends in flight")
        self.sends_in_flight -= n
        if self.state is State.ESTABLISHED:
            self._pump_sends()

    def timer(self, now: float) -> None:
        """Run the negotiation, idle (keepalive) and keepalive-answer timers, [MS-SMBD] 3.1.6."""
        self._now = now
        if self.state in (State.AWAIT_NEGOTIATE, State.NEGOTIATE_RESPONDING):
            if now >= self._negotiate_deadline:
                self._close("SMB Direct negotiation timed out")
            return
        if self.state is not State.ESTABLISHED:
            return
        if self._keepalive is not Keepalive.NONE:
            if now >= self._keepalive_deadline:
                self._close("keepalive not answered")
            return
        if now >= self._last_receive + self.config.keepalive_interval:
            # 3.1.2.2 Idle Connection Timer: ask the peer for a message.
            self._keepalive = Keepalive.PENDING
            self._keepalive_deadline = now + self.config.keepalive_timeout
            self._send_immediate = True
            self._pump_sends()

    def next_deadline(self) -> float | None:
        """When ``timer()`` next has something to do (None once closed)."""
        if self.state in (State.AWAIT_NEGOTIATE, State.NEGOTIATE_RESPONDING):
            return self._negotiate_deadline
        if self.state is not State.ESTABLISHED:
            return None
        if self._keepalive is not Keepalive.NONE:
            return self._keepalive_deadline
        return self._last_receive + self.config.keepalive_interval

    def close(self) -> None:
        """Local close (e.g. the worker went away); no event is produced."""
        self.state = State.CLOSED
        self._send_queue.clear()

    @property
    def send_queue_length(self) -> int:
        return len(self._send_queue)

    # ------------------------------------------------------------------ negotiation

    def _on_negotiate_request(self, data: Buffer) -> None:
        """[MS-SMBD] 3.1.5.6 Receiving a Negotiate Request Message (listener)."""
        req = NegotiateRequest.parse(data)
        self._last_receive = self._now
        if not req.min_version <= SMBD_VERSION_1 <= req.max_version:
            # 3.1.5.3 failure response, then terminate.
            self._post(NegotiateResponse.failure(NtStatus.NOT_SUPPORTED).pack())
            raise SmbdProtocolError(
                f"SMBD versions 0x{req.min_version:04x}..0x{req.max_version:04x} exclude 0x0100")
        if req.credits_requested == 0:
            raise SmbdProtocolError("SMBD negotiate: CreditsRequested is 0")
        if req.max_receive_size < MIN_RECEIVE_SIZE:
            raise SmbdProtocolError(f"SMBD negotiate: MaxReceiveSize {req.max_receive_size} < {MIN_RECEIVE_SIZE}")
        if req.max_fragmented_size < MIN_FRAGMENTED_SIZE:
            raise SmbdProtocolError(
                f"SMBD negotiate: MaxFragmentedSize {req.max_fragmented_size} < {MIN_FRAGMENTED_SIZE}")
        cfg = self.config
        # 3.1.5.6: we receive no more than the peer prefers to send (floor 128) and send
        # no more than it can receive; its reassembly limit bounds our messages.
        self._max_receive_size = max(MIN_RECEIVE_SIZE, min(cfg.max_receive_size, req.preferred_send_size))
        self._max_send_size = min(cfg.max_send_size, req.max_receive_size)
        self._max_fragmented_send_size = req.max_fragmented_size
        self._receive_credit_target = req.credits_requested
        self.state = State.NEGOTIATE_RESPONDING
        self._try_send_negotiate_response()

    def _try_send_negotiate_response(self) -> None:
        """[MS-SMBD] 3.1.5.3: answer once at least one posted receive can be granted.

        The response must grant >= 1 credit (cifs.ko rejects 0); the receive that carried
        the request is consumed, so if the driver had posted only that one we wait for
        its repost instead of failing.
        """
        grant = self._new_grant()
        if not grant:
            return
        self.receive_credits += grant
        cfg = self.config
        resp = NegotiateResponse(
            min_version=SMBD_VERSION_1, max_version=SMBD_VERSION_1, negotiated_version=SMBD_VERSION_1,
            credits_requested=cfg.send_credit_target, credits_granted=grant, status=NtStatus.SUCCESS,
            max_read_write_size=cfg.max_read_write_size, preferred_send_size=self._max_send_size,
            max_receive_size=self._max_receive_size, max_fragmented_size=cfg.max_fragmented_size,
        )
        self._post(resp.pack())
        self.state = State.ESTABLISHED
        self.params = NegotiatedParams(
            max_send_size=self._max_send_size, max_receive_size=self._max_receive_size,
            max_fragmented_send_size=self._max_fragmented_send_size,
            max_fragmented_recv_size=cfg.max_fragmented_size,
            max_read_write_size=cfg.max_read_write_size,
            peer_credits_requested=self._receive_credit_target, credits_granted=grant,
        )
        self._events.append(NegotiateDone(self.params))

    def _on_early_message(self, data: Buffer) -> None:
        raise SmbdProtocolError("peer sent a message before receiving the negotiate response")

    # ------------------------------------------------------------------ data transfer

    def _on_data_transfer(self, data: Buffer) -> None:
        """[MS-SMBD] 3.1.5.8 Receiving a Data Transfer Message."""
        if self.receive_credits <= 0:
            raise SmbdProtocolError("peer sent a message without holding a credit")
        if len(data) > self._max_receive_size:
            raise SmbdProtocolError(f"{len(data)}-byte message exceeds MaxReceiveSize {self._max_receive_size}")
        hdr = DataTransferHeader.parse(data, max_fragmented_size=self.config.max_fragmented_size)
        self.receive_credits -= 1
        self._receive_credit_target = hdr.credits_requested
        self._last_receive = self._now
        # Any message answers our keepalive or our plea for credits.
        self._keepalive = Keepalive.NONE
        self._credit_request_outstanding = False
        if hdr.response_requested:
            self._send_immediate = True
        if hdr.credits_granted:
            self.send_credits += hdr.credits_granted
        if hdr.data_length:
            self._reassemble(hdr, hdr.payload(data))
        self._schedule_grant_if_peer_low()
        self._pump_sends()

    def _reassemble(self, hdr: DataTransferHeader, payload: memoryview) -> None:
        """Append one fragment; deliver when RemainingDataLength reaches 0.

        Within one train the declared total must not change: each fragment's
        RemainingDataLength is the previous one minus this DataLength.  The total was
        already checked against MaxFragmentedSize by the header parser.
        """
        expect = self._reassembly_expect_remaining
        if expect is not None and hdr.remaining_data_length + hdr.data_length != expect:
            raise SmbdProtocolError(
                f"fragment with DataLength {hdr.data_length} and RemainingDataLength "
                f"{hdr.remaining_data_length} does not continue a train expecting {expect} more bytes")
        self._reassembly += payload
        if hdr.remaining_data_length:
            self._reassembly_expect_remaining = hdr.remaining_data_length
            return
        message = bytes(self._reassembly)
        self._reassembly.clear()
        self._reassembly_expect_remaining = None
        self._events.append(MessageReceived(message))

    # ------------------------------------------------------------------ credits and sending

    def _new_grant(self, *, stalled: bool = False) -> int:
        """[MS-SMBD] 3.1.5.9: credits we can add now.

        Normally bounded by posted receives, ReceiveCreditMax and the peer's
        ReceiveCreditTarget (its CreditsRequested).  When a send is stalled on the
        last-credit rule the spec makes granting a MUST, so only the posted receives
        bound it: never grant a receive that is not posted.
        """
        if stalled:
            return max(0, self.posted_receives - self.receive_credits)
        limit = min(self.posted_receives, self.config.receive_credit_max,
                    max(self._receive_credit_target, 1))
        return max(0, limit - self.receive_credits)

    def _schedule_grant_if_peer_low(self) -> None:
        """Decide whether an empty message should carry credits right now (3.1.5.8).

        Always when the peer holds none (it could not send anything, not even a grant).
        Otherwise only when the peer is low *and* the grant at least doubles what it
        holds: a grant-only message costs the peer a receive which, reposted, becomes a
        grant back, so granting in dribbles would make two such peers ping-pong empty
        messages forever.  This hysteresis bounds the exchange.
        """
        if self._send_queue:
            return  # the queued data will carry the grant
        grant = self._new_grant()
        if not grant:
            return
        held = self.receive_credits
        low = min(self.config.grant_low_watermark, self._receive_credit_target // 4)
        if held == 0 or (held <= low and held + grant > 2 * low):
            self._send_immediate = True

    def _pump_sends(self) -> None:
        """[MS-SMBD] 3.1.5.1 Sending Upper Layer Messages: drain the queue while credits last."""
        cfg = self.config
        while self._send_queue or self._send_immediate:
            if self.sends_in_flight >= cfg.max_sends_in_flight or self.send_credits == 0:
                return
            grant = self._new_grant(stalled=self.send_credits == 1)
            if self.send_credits == 1 and grant == 0:
                # The last credit is kept for a message that grants credits; every posted
                # receive is granted already, so ask the driver for one more (3.1.5.9).
                if not self._extra_receive_requested:
                    self._extra_receive_requested = True
                    self._events.append(PostReceives(1))
                return
            self.send_credits -= 1
            self.receive_credits += grant
            has_data = bool(self._send_queue)
            flags = 0
            if self._keepalive is Keepalive.PENDING:
                flags = SMB_DIRECT_RESPONSE_REQUESTED
                self._keepalive = Keepalive.SENT
                self._keepalive_deadline = self._now + cfg.keepalive_timeout
            elif has_data and self.send_credits <= 1 and not self._credit_request_outstanding:
                # About to stall on credits: ask the peer to answer (and grant) promptly.
                # Only data messages ask, so two peers never trade empty requests.
                flags = SMB_DIRECT_RESPONSE_REQUESTED
                self._credit_request_outstanding = True
            self._send_immediate = False
            tag = None
            if has_data:
                payload, rkey, tag = self._next_fragment(grant, flags)
            else:
                payload, rkey = build_data_transfer(cfg.send_credit_target, grant, flags, 0), None
            self._post(payload, rkey, tag)

    def _next_fragment(self, grant: int, flags: int) -> tuple[bytes, Optional[int], Optional[int]]:
        out = self._send_queue[0]
        room = self._max_send_size - DATA_TRANSFER_DATA_OFFSET
        piece = out.data[out.sent:out.sent + room]
        out.sent += len(piece)
        remaining = len(out.data) - out.sent
        rkey = tag = None
        if not remaining:
            self._send_queue.popleft()
            rkey, tag = out.invalidate_rkey, out.tag  # both ride on the message's last fragment
        return build_data_transfer(self.config.send_credit_target, grant, flags, remaining, piece), rkey, tag

    def _post(self, payload: bytes, invalidate_rkey: Optional[int] = None, tag: Optional[int] = None) -> None:
        self.sends_in_flight += 1
        self._events.append(PostSend(payload, invalidate_rkey, tag))

    def _close(self, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._send_queue.clear()
        self._events.append(CloseConnection(reason))

    _RECEIVE_HANDLERS = {
        State.AWAIT_NEGOTIATE: _on_negotiate_request,
        State.NEGOTIATE_RESPONDING: _on_early_message,
        State.ESTABLISHED: _on_data_transfer,
    }
