"""Cross-worker caching decisions without I/O or sleeps: the share-mode prediction that
decides whether an open breaks only handle caching, and the records a worker publishes
(smbd.server.caching, smbd.server.sharemode)."""
import os
from types import SimpleNamespace

from smbd.server import caching
from smbd.server.sharemode import would_conflict
from smbd.store import MemoryStore
from smbd.wire.create import Access, OplockLevel, ShareAccess

RW = Access.FILE_READ_DATA | Access.FILE_WRITE_DATA
ALL_SHARE = ShareAccess.READ | ShareAccess.WRITE | ShareAccess.DELETE
STAT = Access.FILE_READ_ATTRIBUTES | Access.SYNCHRONIZE


def test_share_none_conflicts_with_any_data_open():
    assert would_conflict(Access.FILE_READ_DATA, ALL_SHARE, RW, 0)
    assert would_conflict(RW, 0, Access.FILE_READ_DATA, ALL_SHARE)  # and the other way round


def test_compatible_share_modes_do_not_conflict():
    assert not would_conflict(RW, ALL_SHARE, RW, ALL_SHARE)
    assert not would_conflict(Access.FILE_READ_DATA, ShareAccess.READ, Access.FILE_READ_DATA, ShareAccess.READ)
    assert would_conflict(Access.FILE_WRITE_DATA, ALL_SHARE, Access.FILE_READ_DATA, ShareAccess.READ)


def test_attribute_only_opens_take_part_in_no_share_check():
    assert not would_conflict(STAT, 0, RW, 0)
    assert not would_conflict(RW, 0, STAT, 0)


class _Oplocks:
    def __init__(self, levels):
        self.levels = levels
        self.has_grants = bool(levels)

    def levels_of(self, file_key):
        return self.levels.get(file_key, [])


class _Leases:
    def __init__(self, leases):
        self.leases = leases
        self.active = bool(leases)

    def leases_of(self, file_key):
        return self.leases.get(file_key, [])


def _server(levels=None, leases=None, opens=()):
    return SimpleNamespace(oplocks=_Oplocks(levels or {}), leases=_Leases(leases or {}), store=MemoryStore(),
                           caching_published={}, messenger=object(),
                           opens_of=lambda key: [o for o in opens if o.file_key == key])


def _open(key, access, share):
    return SimpleNamespace(file_key=key, granted_access=access, share_access=share, closed=False)


def test_batch_oplock_is_published_as_read_write_handle_with_its_opens():
    server = _server(levels={7: [OplockLevel.BATCH]}, opens=[_open(7, RW, 0)])
    caching.publish(server, 7)
    (key, record), = server.store.scan(caching.TABLE, "7/")
    assert key == f"7/{os.getpid()}"
    assert record == {"pid": os.getpid(), "read": True, "write": True, "handle": True, "oplock": True,
                      "opens": [[RW, 0]]}


def test_lease_breaking_to_rh_still_counts_its_write_until_acknowledged():
    lease = SimpleNamespace(state=0x1 | 0x2 | 0x4, breaking_to=None)
    server = _server(leases={9: [lease]})
    assert caching.summary(server, 9)["write"]
    lease.state, lease.breaking_to = 0x1 | 0x2, None  # acknowledged RH
    record = caching.summary(server, 9)
    assert record["read"] and record["handle"] and not record["write"]


def test_nothing_cached_removes_the_record_and_unchanged_writes_nothing():
    levels = {5: [OplockLevel.II]}
    server = _server(levels=levels)
    caching.publish(server, 5)
    assert server.store.count(caching.TABLE) == 1
    server.store.delete(caching.TABLE, f"5/{os.getpid()}")
    caching.publish(server, 5)  # same state as published: the store is not written again
    assert server.store.count(caching.TABLE) == 0
    levels[5] = []
    server.store.put(caching.TABLE, f"5/{os.getpid()}", {"pid": os.getpid()})
    caching.publish(server, 5)
    assert server.store.count(caching.TABLE) == 0 and 5 not in server.caching_published


def test_other_workers_records_are_found_by_what_they_hold():
    server = _server()
    server.store.put(caching.TABLE, "3/11", {"pid": 11, "read": True, "write": False, "handle": True})
    server.store.put(caching.TABLE, "3/12", {"pid": 12, "read": True, "write": False, "handle": False})
    server.store.put(caching.TABLE, f"3/{os.getpid()}", {"pid": os.getpid(), "read": True})  # our own
    assert sorted(caching.holders_elsewhere(server, 3)) == [11, 12]
    assert caching.holders_elsewhere(server, 3, "handle") == [11]
    assert caching.holders_elsewhere(server, 4) == []


def test_an_oplock_here_or_in_another_worker_is_told_from_a_lease():
    """A new lease beside an oplock gets no H (smb2.lease.oplock): the record says which."""
    lease = SimpleNamespace(state=0x1 | 0x2, breaking_to=None)
    server = _server(leases={3: [lease]})
    assert caching.summary(server, 3)["oplock"] is False
    assert not caching.oplock_held(server, 3)
    server.store.put(caching.TABLE, "3/11", {"pid": 11, "read": True, "handle": True, "oplock": False})
    assert not caching.oplock_held(server, 3)  # another worker's lease
    server.store.put(caching.TABLE, "3/12", {"pid": 12, "read": True, "oplock": True})
    assert caching.oplock_held(server, 3)  # another worker's level II
    assert caching.oplock_held(_server(levels={4: [OplockLevel.II]}), 4)  # this worker's


def test_read_control_is_a_stat_open_for_leases_but_not_for_oplocks():
    from smbd.server.leases import is_oplock_stat_open, is_stat_open

    assert is_stat_open(STAT) and is_oplock_stat_open(STAT)
    assert is_stat_open(Access.READ_CONTROL) and not is_oplock_stat_open(Access.READ_CONTROL)
    assert not is_stat_open(Access.FILE_READ_DATA) and not is_oplock_stat_open(Access.FILE_READ_DATA)


def test_delete_pending_set_in_one_worker_is_seen_by_another():
    """Stream.DeletePending lives in the store for the other workers (smbtorture oplock.doc)."""
    from smbd.server.config import ServerConfig, ShareConfig
    from smbd.server.state import DELETE_PENDING_TABLE, ServerState

    shared = MemoryStore()
    one, two = (ServerState(ServerConfig((ShareConfig("s", "/tmp"),), ())) for _ in range(2))
    for state in (one, two):
        state.store, state.messenger = shared, object()
    one.set_delete_pending(42)
    assert two.delete_pending(42) and not two.delete_pending(43)
    assert shared.count(DELETE_PENDING_TABLE) == 1
    one.clear_delete_pending(42)
    assert not two.delete_pending(42) and shared.count(DELETE_PENDING_TABLE) == 0
    for state in (one, two):
        state.io_pool.shutdown(wait=True)
