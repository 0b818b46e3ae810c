"""ChannelSequence checks of MS-SMB2 3.3.5.2.10 (smbd.server.channel_sequence), without I/O."""
import pytest

from smbd.server.channel_sequence import SequenceState, admit, finish
from smbd.status import NtStatus, SmbError


def test_same_sequence_counts_and_finishes():
    s = SequenceState()
    g = admit(s, 0, replay=False, modifying=True)
    assert (g, s.outstanding, s.pre_outstanding) == (0, 1, 0)
    finish(s, 0, g)
    assert s.outstanding == 0


def test_newer_sequence_moves_outstanding_to_pre():
    s = SequenceState()
    g0 = admit(s, 0, replay=False, modifying=True)
    g1 = admit(s, 1, replay=False, modifying=True)
    assert (s.sequence, s.outstanding, s.pre_outstanding) == (1, 1, 1)
    finish(s, 0, g0)  # the old request ends: it was counted as pre-outstanding
    assert (s.outstanding, s.pre_outstanding) == (1, 0)
    finish(s, 1, g1)
    assert (s.outstanding, s.pre_outstanding) == (0, 0)


def test_stale_modifying_request_is_refused():
    s = SequenceState()
    admit(s, 5, replay=False, modifying=False)
    with pytest.raises(SmbError) as e:
        admit(s, 4, replay=False, modifying=True)
    assert e.value.status == NtStatus.FILE_NOT_AVAILABLE


def test_stale_read_is_served_uncounted():
    s = SequenceState()
    admit(s, 5, replay=False, modifying=False)
    assert admit(s, 4, replay=False, modifying=False) is None
    assert s.outstanding == 1


def test_replay_waits_for_older_requests():
    s = SequenceState()
    admit(s, 0, replay=False, modifying=True)
    admit(s, 1, replay=False, modifying=True)  # the old one is now pre-outstanding
    with pytest.raises(SmbError):
        admit(s, 1, replay=True, modifying=True)
    finish(s, 0, 0)
    assert admit(s, 1, replay=True, modifying=True) == 0


def test_wrap_of_the_16_bit_counter_is_newer_not_stale():
    s = SequenceState(sequence=0xFFFF)
    g = admit(s, 0x0001, replay=False, modifying=True)  # 0x0001 - 0xFFFF wraps: newer
    assert s.sequence == 1 and g == 1
    with pytest.raises(SmbError):
        admit(s, 0xFFFE, replay=False, modifying=True)  # and the pre-wrap value is stale
