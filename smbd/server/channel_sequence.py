"""Verifying the ChannelSequence of requests on an Open (MS-SMB2 3.3.5.2.10).

A client that loses a channel bumps the session's ChannelSequence and resends on another
channel. The server keeps per Open the newest ChannelSequence it saw and how many requests
are outstanding under it (Open.OutstandingRequestCount) and under older ones
(OutstandingPreRequestCount), so that a modifying request (WRITE, SET_INFO, IOCTL) still
carrying an older sequence, one that may race with its own resend, is refused with
STATUS_FILE_NOT_AVAILABLE instead of being done twice or out of order. A replayed request
(SMB2_FLAGS_REPLAY_OPERATION) is admitted only when nothing from an older sequence is
still outstanding.

Like Samba, a difference of more than 0x7FFF in 16-bit arithmetic is read as a wrap of the
client's counter, not as a stale request. Pure: the caller passes the Open and the header
fields; ``admit`` and ``finish`` bracket the request.
"""
from __future__ import annotations

from dataclasses import dataclass

from smbd.status import NtStatus, SmbError
from smbd.wire.header import Command

MODIFYING = frozenset({Command.WRITE, Command.SET_INFO, Command.IOCTL})


@dataclass(eq=False)
class SequenceState:
    """The Open's side: 3.3.1.10 Open.ChannelSequence, OutstandingRequestCount,
    OutstandingPreRequestCount; ``generation`` counts wraps, to tell which count a request
    that finishes after a wrap belongs to."""

    sequence: int = 0
    generation: int = 0
    outstanding: int = 0
    pre_outstanding: int = 0


def _compare(request: int, current: int) -> tuple[int, int]:
    cmp = request - current
    wrap = 1 if cmp < 0 else 0
    if abs(cmp) > 0x7FFF:
        cmp = -cmp
    return cmp, wrap


def admit(state: SequenceState, sequence: int, *, replay: bool, modifying: bool) -> int | None:
    """Count a request in; returns the generation it was counted under (to pass to
    ``finish``), or None if it was not counted. Raises FILE_NOT_AVAILABLE for a stale
    modifying request."""
    cmp, wrap = _compare(sequence, state.sequence)
    if cmp == 0 and not (replay and state.pre_outstanding):
        state.outstanding += 1
    elif cmp > 0 and not (replay and state.pre_outstanding):
        state.pre_outstanding += state.outstanding
        state.outstanding = 1
        state.sequence = sequence
        state.generation += wrap
    elif modifying:
        raise SmbError(NtStatus.FILE_NOT_AVAILABLE, "stale ChannelSequence")
    else:
        return None
    return state.generation


def finish(state: SequenceState, sequence: int, generation: int) -> None:
    if state.sequence == sequence and state.generation == generation and state.outstanding:
        state.outstanding -= 1
    elif state.pre_outstanding:
        state.pre_outstanding -= 1
