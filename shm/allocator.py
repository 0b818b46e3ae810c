"""Slot allocation for a :class:`shm.pool.BufferPool`; lives in the owning (proxy) process only.

Workers never allocate: they ask the proxy, which answers with a slot index (an int)
over its control socket, and hand it back when done.  Each slot is recorded with an
``owner_key`` (a worker id, a connection id...) so everything a dead worker or a
dropped connection held is returned with one :meth:`SlotAllocator.release_all_of`.

The pool never grows: :meth:`acquire` returns None when every slot is taken and the
caller back-pressures (fewer SMB2 credits, or the request waits).  Not thread-safe: the
proxy calls it from its event loop only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


class SlotError(ValueError):
    """Misuse of the allocator: a slot out of range, or released when not in use."""


class DoubleReleaseError(SlotError):
    """A slot was released that is not in use (released twice, or never acquired)."""


@dataclass(frozen=True, slots=True)
class SlotMetrics:
    slot_count: int
    in_use: int
    high_water: int
    acquired_total: int
    exhausted_total: int  # acquire() calls that returned None


class SlotAllocator:
    """A LIFO free list of ``slot_count`` slot indices with per-owner bookkeeping.

    LIFO so the most recently used (cache- and TLB-warm) slot is reused first.
    """

    def __init__(self, slot_count: int):
        if slot_count <= 0:
            raise ValueError("slot_count must be positive")
        self.slot_count = slot_count
        self._free = list(range(slot_count - 1, -1, -1))  # pop() hands out slot 0 first
        self._owner: dict[int, Hashable] = {}
        self._by_owner: dict[Hashable, set[int]] = {}
        self._high_water = 0
        self._acquired_total = 0
        self._exhausted_total = 0

    def acquire(self, owner_key: Hashable = None) -> int | None:
        """A free slot index, recorded as held by ``owner_key``; None when exhausted."""
        if not self._free:
            self._exhausted_total += 1
            return None
        slot = self._free.pop()
        self._owner[slot] = owner_key
        self._by_owner.setdefault(owner_key, set()).add(slot)
        self._acquired_total += 1
        self._high_water = max(self._high_water, len(self._owner))
        return slot

    def release(self, slot: int) -> None:
        """Return ``slot``; :class:`DoubleReleaseError` if it is not in use."""
        if not isinstance(slot, int) or not 0 <= slot < self.slot_count:
            raise SlotError(f"slot {slot!r} outside 0..{self.slot_count - 1}")
        try:
            owner = self._owner.pop(slot)
        except KeyError:
            raise DoubleReleaseError(f"slot {slot} released but not in use") from None
        held = self._by_owner[owner]
        held.discard(slot)
        if not held:
            del self._by_owner[owner]
        self._free.append(slot)

    def release_all_of(self, owner_key: Hashable) -> list[int]:
        """Release every slot held by ``owner_key`` (a dead worker or connection); returns them."""
        slots = sorted(self._by_owner.get(owner_key, ()))
        for slot in slots:
            self.release(slot)
        return slots

    def owner_of(self, slot: int) -> Hashable:
        if slot not in self._owner:
            raise SlotError(f"slot {slot} is not in use")
        return self._owner[slot]

    def held_by(self, owner_key: Hashable) -> frozenset[int]:
        return frozenset(self._by_owner.get(owner_key, ()))

    def count_held(self, owner_key: Hashable) -> int:
        """How many slots ``owner_key`` holds (no copy: the proxy asks per message)."""
        return len(self._by_owner.get(owner_key, ()))

    @property
    def in_use(self) -> int:
        return len(self._owner)

    @property
    def free(self) -> int:
        return len(self._free)

    def metrics(self) -> SlotMetrics:
        return SlotMetrics(self.slot_count, self.in_use, self._high_water,
                           self._acquired_total, self._exhausted_total)
