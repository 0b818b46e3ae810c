"""Tests of the POSIX shared-memory slot pool (shm.pool) and its allocator (shm.allocator)."""
from __future__ import annotations

import ctypes
import mmap
import multiprocessing
import os
import uuid

import posix_ipc
import pytest

from shm.allocator import DoubleReleaseError, SlotAllocator, SlotError
from shm.pool import (BufferPool, PoolFormatError, PoolInUseError, cleanup_stale,
                      list_segments)

PAGE = mmap.PAGESIZE


@pytest.fixture
def prefix():
    """A prefix unique to this test; afterwards nothing with it may be left in /dev/shm."""
    p = f"smbdd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}-"
    yield p
    leftovers = list_segments(p)
    cleanup_stale(p)
    assert leftovers == [], f"leaked segments: {leftovers}"


# ---------------------------------------------------------------- child processes (spawn)

def _child_attach_and_answer(name: str, read_slot: int, write_slot: int, queue) -> None:
    from shm.pool import BufferPool as Pool
    pool = Pool.attach(name)
    with pool.slot_view(read_slot, 16) as view:
        seen = bytes(view)
    with pool.slot_view(write_slot) as view:
        view[:5] = b"reply"
        view[-3:] = b"end"
    queue.put((seen, pool.slot_size, pool.slot_count))
    pool.close()


def _child_create_and_die(name: str) -> None:
    from shm.pool import BufferPool as Pool
    Pool.create(name, PAGE, 2)
    os._exit(0)  # a crashed owner: no close(), no unlink


# ---------------------------------------------------------------- pool

def test_create_attach_cross_process(prefix):
    name = prefix + "pool"
    ctx = multiprocessing.get_context("spawn")
    with BufferPool.create(name, 64 * 1024, 8) as pool:
        assert list_segments(prefix) == ["/" + name]
        with pool.slot_view(1) as view:
            view[:16] = b"0123456789abcdef"
        queue = ctx.Queue()
        child = ctx.Process(target=_child_attach_and_answer, args=(name, 1, 6, queue))
        child.start()
        seen, slot_size, slot_count = queue.get(timeout=60)
        child.join(60)
        assert child.exitcode == 0
        assert seen == b"0123456789abcdef"
        assert (slot_size, slot_count) == (64 * 1024, 8)  # geometry read from the header
        with pool.slot_view(6) as view:
            assert bytes(view[:5]) == b"reply" and bytes(view[-3:]) == b"end"
    assert list_segments(prefix) == []


def test_views_are_zero_copy_and_addresses_match(prefix):
    with BufferPool.create(prefix + "zc", 2 * PAGE, 4) as owner, BufferPool.attach(prefix + "zc") as worker:
        assert owner.base_address % PAGE == 0
        assert owner.size == PAGE + 4 * 2 * PAGE
        for i in range(4):
            assert owner.slot_address(i) == owner.base_address + PAGE + i * 2 * PAGE
            assert owner.slot_address(i) % PAGE == 0  # O_DIRECT-able
        with owner.slot_view(3) as view:
            view[100:104] = b"abcd"
            # The same bytes at the raw address: the view is the mapping, not a copy.
            assert ctypes.string_at(owner.slot_address(3) + 100, 4) == b"abcd"
            # A write through the raw address (what an RDMA NIC does) shows in the view.
            ctypes.memmove(owner.slot_address(3), b"NIC!", 4)
            assert bytes(view[:4]) == b"NIC!"
            assert view.readonly is False and len(view) == 2 * PAGE
        # Another mapping of the segment (a worker) sees both writes.
        with worker.slot_view(3, 104) as wview:
            assert bytes(wview[:4]) == b"NIC!" and bytes(wview[100:]) == b"abcd"
        with owner.slot_view(2) as a, owner.slot_view(3) as b:
            a[-1:] = b"\xff"
            assert b[0] == ord("N")  # slots do not overlap


def test_slot_bounds(prefix):
    with BufferPool.create(prefix + "b", PAGE, 2) as pool:
        with pytest.raises(IndexError):
            pool.slot_view(2)
        with pytest.raises(IndexError):
            pool.slot_address(-1)
        with pytest.raises(ValueError):
            pool.slot_view(0, PAGE + 1)


def test_create_rejects_bad_geometry_and_existing_name(prefix):
    with pytest.raises(ValueError):
        BufferPool.create(prefix + "g", PAGE + 1, 2)
    with pytest.raises(ValueError):
        BufferPool.create(prefix + "g", PAGE, 0)
    with BufferPool.create(prefix + "g", PAGE, 1):
        with pytest.raises(posix_ipc.ExistentialError):
            BufferPool.create(prefix + "g", PAGE, 1)


def test_attach_rejects_missing_and_foreign_segments(prefix):
    with pytest.raises(posix_ipc.ExistentialError):
        BufferPool.attach(prefix + "missing")
    foreign = posix_ipc.SharedMemory("/" + prefix + "foreign", posix_ipc.O_CREX, size=2 * PAGE)
    foreign.close_fd()
    try:
        with pytest.raises(PoolFormatError):
            BufferPool.attach(prefix + "foreign")  # all zeros: no magic
    finally:
        posix_ipc.unlink_shared_memory("/" + prefix + "foreign")


def test_close_unlinks_even_with_live_views(prefix):
    pool = BufferPool.create(prefix + "live", PAGE, 2)
    view = pool.slot_view(0)
    with pytest.raises(PoolInUseError):
        pool.close()
    assert list_segments(prefix) == []  # the name is gone already
    view[:2] = b"ok"                      # the mapping is still valid for the holder
    view.release()
    pool.close()
    assert pool.closed


def test_worker_close_does_not_unlink(prefix):
    with BufferPool.create(prefix + "w", PAGE, 1) as owner:
        BufferPool.attach(prefix + "w").close()
        assert list_segments(prefix) == ["/" + owner.name.lstrip("/")]


def test_cleanup_stale_after_owner_crash(prefix):
    name = prefix + "crashed"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_create_and_die, args=(name,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert list_segments(prefix) == ["/" + name]  # leaked, and detectable by listing
    with BufferPool.create(prefix + "alive", PAGE, 1):
        removed = cleanup_stale(prefix, keep=(prefix + "alive",))
        assert removed == ["/" + name]
        assert list_segments(prefix) == ["/" + prefix + "alive"]


# ---------------------------------------------------------------- allocator

def test_allocator_exhaustion_returns_none_and_metrics():
    alloc = SlotAllocator(3)
    got = [alloc.acquire("w1") for _ in range(3)]
    assert sorted(got) == [0, 1, 2]
    assert alloc.acquire("w1") is None
    assert alloc.acquire("w2") is None
    m = alloc.metrics()
    assert (m.in_use, m.high_water, m.acquired_total, m.exhausted_total) == (3, 3, 3, 2)
    alloc.release(got[1])
    assert alloc.acquire("w2") == got[1]  # LIFO: the slot just freed comes back first
    alloc.release(got[0])
    alloc.release(got[1])
    assert alloc.in_use == 1 and alloc.metrics().high_water == 3


def test_allocator_double_release_and_bounds():
    alloc = SlotAllocator(2)
    slot = alloc.acquire()
    alloc.release(slot)
    with pytest.raises(DoubleReleaseError):
        alloc.release(slot)
    with pytest.raises(DoubleReleaseError):
        alloc.release(1)           # never acquired
    with pytest.raises(SlotError):
        alloc.release(2)
    with pytest.raises(SlotError):
        alloc.release(-1)
    assert alloc.free == 2


def test_release_all_of_frees_only_that_owner():
    alloc = SlotAllocator(6)
    a = {alloc.acquire(("worker", 1)) for _ in range(3)}
    b = {alloc.acquire(("conn", 7)) for _ in range(2)}
    assert alloc.held_by(("worker", 1)) == a
    assert alloc.owner_of(next(iter(b))) == ("conn", 7)
    assert set(alloc.release_all_of(("worker", 1))) == a
    assert alloc.in_use == 2 and alloc.held_by(("worker", 1)) == frozenset()
    assert alloc.release_all_of(("worker", 1)) == []
    for slot in b:
        alloc.release(slot)
    assert alloc.in_use == 0 and alloc.free == 6
