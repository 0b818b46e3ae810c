"""Persistent handles on a continuously available share (smbd.server.persistent) against a
real smbdd: the Open, its data, its byte-range lock survive `kill -9` of its worker and then
of smbdd itself, and come back on the client's DH2C. The records' bookkeeping (timeouts of
an earlier run) is checked without processes. The client side spells the contexts out from
MS-SMB2 2.2.13.2.11/12 and 2.2.14.2.12 (tests/smb2client.py)."""
from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import threading
import uuid
from types import SimpleNamespace

import pytest

from smbd.server import persistent
from smbd.store import MemoryStore, process_started
from tests import smb2client as c
from tests.smbdd_process import PASSWORD, USER, Smbdd, alive, wait_until
from tests.test_leases_durable import response_contexts

PERSISTENT = 0x2  # SMB2_DHANDLE_FLAG_PERSISTENT
GLOBAL_CAP_PERSISTENT_HANDLES = 0x10
SHARE_CAP_CONTINUOUS_AVAILABILITY = 0x10
STATUS_LOCK_NOT_GRANTED = 0xC0000055
STATUS_OBJECT_NAME_NOT_FOUND = 0xC0000034
STATUS_SHARING_VIOLATION = 0xC0000043
FILE_READ_ATTRIBUTES = 0x80
FILE_OVERWRITE_IF = 5


def test_records_of_an_earlier_run_wait_for_their_timeout_then_go():
    store = MemoryStore()
    gone = _ended_pid()
    store.update(persistent.TABLE, "a", lambda _: {"pid": 4242, "timeout": 60.0, "expires": None})
    store.update(persistent.TABLE, "b", lambda _: {"pid": gone, "timeout": 5.0, "expires": None})
    assert persistent.orphan(store, 4242, now=1000.0) == 1  # only that worker's
    assert store.get(persistent.TABLE, "a") == {"pid": None, "timeout": 60.0, "expires": 1060.0}
    assert store.get(persistent.TABLE, "b")["expires"] is None
    assert persistent.orphan(store, None, now=2000.0) == 1  # smbdd starts: all that are left
    assert store.get(persistent.TABLE, "b")["expires"] == 2005.0
    assert persistent.expire(store, now=2004.0) == 1  # "a" ran out at 1060
    assert store.get(persistent.TABLE, "a") is None and store.get(persistent.TABLE, "b") is not None
    assert persistent.expire(store, now=2006.0) == 1
    assert store.count(persistent.TABLE) == 0


def _ended_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_record_whose_holder_still_runs_waits_and_a_reused_pid_does_not_count():
    """At a start of smbdd a worker of the earlier run may still be winding down: its records
    are not stamped until it is gone. A record naming our pid with another start time is of
    a process that had the pid before (a reboot, say): its holder is gone."""
    store = MemoryStore()
    me, started = os.getpid(), process_started(os.getpid())
    store.update(persistent.TABLE, "live", lambda _: {"pid": me, "started": started, "timeout": 9.0, "expires": None})
    store.update(persistent.TABLE, "reused", lambda _: {"pid": me, "started": started - 100, "timeout": 9.0,
                                                         "expires": None})
    assert persistent.orphan(store, None, now=100.0) == 1
    assert store.get(persistent.TABLE, "live")["expires"] is None
    assert store.get(persistent.TABLE, "reused")["expires"] == 109.0
    assert persistent.orphaned_record(store, 0, now=100.0) is None


def _server_of(store, run: str):
    return SimpleNamespace(persistent_store=store, config=SimpleNamespace(runtime_dir=run))


def test_a_reconnect_waits_for_the_worker_of_an_earlier_run_to_exit():
    store = MemoryStore()
    holder = subprocess.Popen(["sleep", "60"])
    record = {"pid": holder.pid, "started": process_started(holder.pid), "run": "/dev/shm/smbdd-run-1",
              "timeout": 60.0, "expires": None}
    store.update(persistent.TABLE, persistent.key_of(7), lambda _: record)

    async def reconnect():
        asyncio.get_running_loop().call_later(0.1, holder.kill)
        return await persistent.reclaimable(_server_of(store, "/dev/shm/smbdd-run-2"), 7)

    try:
        assert asyncio.run(reconnect()) == record  # handed over once the holder is gone
        assert holder.poll() is not None
    finally:
        holder.kill()
        holder.wait()


def test_a_reconnect_gives_up_on_a_holder_that_does_not_exit(monkeypatch):
    store = MemoryStore()
    monkeypatch.setattr(persistent, "FORMER_HOLDER_WAIT", 0.1)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        store.update(persistent.TABLE, persistent.key_of(7), lambda _: {
            "pid": holder.pid, "started": process_started(holder.pid), "run": "old", "expires": None})
        assert asyncio.run(persistent.reclaimable(_server_of(store, "new"), 7)) is None
        # A holder of this run is another matter: no waiting, it is simply not orphaned.
        assert asyncio.run(persistent.reclaimable(_server_of(store, "old"), 7)) is None
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()


def _dh2q(create_guid: uuid.UUID) -> bytes:
    return c.create_context(b"DH2Q", struct.pack("<II8s16s", 60_000, PERSISTENT, b"", create_guid.bytes_le))


def _dh2c(file_id: bytes, create_guid: uuid.UUID) -> bytes:
    return c.create_context(b"DH2C", file_id + create_guid.bytes_le + struct.pack("<I", PERSISTENT))


def _lock(fid: bytes, offset: int, length: int, flags: int) -> bytes:
    """LOCK request (2.2.26) with one SMB2_LOCK_ELEMENT."""
    return struct.pack("<HHIQQQQI4x", 48, 1, 0, *struct.unpack("<QQ", fid), offset, length, flags)


EXCLUSIVE_NOW, UNLOCK = 0x2 | 0x10, 0x4


class CaServer(Smbdd):
    def __init__(self, tmp, state):
        config = tmp / "ca.toml"
        (tmp / "ca").mkdir(exist_ok=True)
        config.write_text(f'[shares.ca]\npath = "{tmp / "ca"}"\ncontinuous_availability = true\n')
        super().__init__(tmp, "--config", str(config), "--state-dir", str(state), share=tmp / "plain")

    def kill(self) -> None:
        """smbdd and all its workers, with SIGKILL: nothing gets to clean up."""
        pids = [p for p in self.worker_pids() if alive(p)]
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert wait_until(lambda: not any(alive(p) for p in pids), 10)
        self._log.close()


def _client(server: Smbdd, share: str = "ca") -> c.RawClient:
    return c.RawClient("127.0.0.1", server.port, timeout=15).login(USER, PASSWORD, share)


def _reconnect(server: Smbdd, fid: bytes, create_guid: uuid.UUID) -> tuple[c.RawClient, c.Response]:
    cl = _client(server)
    return cl, cl.call(c.CREATE, c.create_body("ignored", contexts=_dh2c(fid, create_guid)))


@pytest.mark.peer
def test_persistent_handle_survives_its_worker_and_smbdd(tmp_path):
    state = tmp_path / "state"
    srv = CaServer(tmp_path, state)
    try:
        a = c.RawClient("127.0.0.1", srv.port, timeout=15)
        neg = a.negotiate()
        assert struct.unpack_from("<I", neg.body, 24)[0] & GLOBAL_CAP_PERSISTENT_HANDLES  # 2.2.4
        a.session_setup(USER, PASSWORD)
        tc = a.tree_connect("ca")
        assert struct.unpack_from("<I", tc.body, 8)[0] & SHARE_CAP_CONTINUOUS_AVAILABILITY  # 2.2.10
        cguid = uuid.uuid4()
        r = a.call(c.CREATE, c.create_body("ca.dat", access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF,
                                           contexts=_dh2q(cguid)))
        assert r.status == 0
        assert response_contexts(r)[b"DH2Q"] == struct.pack("<II", 60_000, PERSISTENT)
        fid = r.file_id
        assert a.call(c.WRITE, c.write_body(fid, b"written before the crash")).status == 0
        assert a.call(c.LOCK, _lock(fid, 0, 7, EXCLUSIVE_NOW)).status == 0

        # kill -9 of the worker: the reconnect reaches a new worker, which opens the file again.
        worker = srv.worker_pids()[-1]
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: not alive(worker), 10)
        b, r = _reconnect(srv, fid, cguid)
        assert r.status == 0, hex(r.status)
        fid_b = r.file_id
        assert fid_b[:8] == fid[:8]  # the same persistent FileId
        rd = b.call(c.READ, c.read_body(fid_b, 100))
        assert rd.status == 0 and rd.body[16:] == b"written before the crash"
        other = _client(srv)
        probe = other.call(c.CREATE, c.create_body("ca.dat", access=c.READ_WRITE_ACCESS))
        assert probe.status == 0
        assert other.call(c.LOCK, _lock(probe.file_id, 0, 7, EXCLUSIVE_NOW)).status == STATUS_LOCK_NOT_GRANTED
        other.close()
        assert b.call(c.WRITE, c.write_body(fid_b, b"!", offset=24)).status == 0

        # kill -9 of smbdd and every worker, then a new smbdd on the same state directory.
        srv.kill()
        srv = CaServer(tmp_path, state)
        b2, r = _reconnect(srv, fid, cguid)
        assert r.status == 0, hex(r.status)
        fid_c = r.file_id
        rd = b2.call(c.READ, c.read_body(fid_c, 100))
        assert rd.status == 0 and rd.body[16:] == b"written before the crash!"
        assert b2.call(c.LOCK, _lock(fid_c, 0, 7, UNLOCK)).status == 0  # the lock came back too
        assert b2.call(c.CLOSE, c.close_body(fid_c)).status == 0
        # Closed for good: nothing left to reconnect to.
        _, r = _reconnect(srv, fid, cguid)
        assert r.status == STATUS_OBJECT_NAME_NOT_FOUND
    finally:
        srv.stop()


@pytest.mark.peer
def test_a_reconnect_after_smbdd_died_waits_for_the_worker_still_winding_down(tmp_path):
    """kill -9 of smbdd alone: its worker sees its control socket close and winds down on its
    own, still holding the Open for a while (held here with SIGSTOP). A reconnect that
    reaches the new smbdd meanwhile waits for that worker to exit, then gets the Open back
    with its data; it is neither refused nor opened beside the old descriptor."""
    state = tmp_path / "state"
    srv = CaServer(tmp_path, state)
    worker = None
    try:
        a = _client(srv)
        cguid = uuid.uuid4()
        r = a.call(c.CREATE, c.create_body("slow.dat", access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF,
                                           contexts=_dh2q(cguid)))
        assert r.status == 0
        fid = r.file_id
        assert a.call(c.WRITE, c.write_body(fid, b"before smbdd died")).status == 0
        worker = srv.worker_pids()[-1]
        os.kill(worker, signal.SIGSTOP)
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
        srv._log.close()
        srv = CaServer(tmp_path, state)

        def let_it_go():
            wait_until(lambda: f"waiting for worker {worker} of an earlier run" in srv.log(), 20)
            os.kill(worker, signal.SIGCONT)

        releaser = threading.Thread(target=let_it_go)
        releaser.start()
        b, r = _reconnect(srv, fid, cguid)
        releaser.join()
        assert r.status == 0, hex(r.status) + srv.log()[-2000:]
        assert f"waiting for worker {worker} of an earlier run to exit" in srv.log()
        assert not alive(worker)
        rd = b.call(c.READ, c.read_body(r.file_id, 100))
        assert rd.status == 0 and rd.body[16:] == b"before smbdd died"
        assert b.call(c.CLOSE, c.close_body(r.file_id)).status == 0
    finally:
        if worker is not None and alive(worker):
            os.kill(worker, signal.SIGKILL)
        srv.stop()


@pytest.mark.peer
def test_orphaned_persistent_handle_keeps_its_share_mode(tmp_path):
    """Between the crash and the reconnect no descriptor holds the Open's share mode: the
    record does, for every other open (a stat open excepted, as always), and not for the
    reconnect itself. After its CLOSE the file is free."""
    srv = CaServer(tmp_path, tmp_path / "state")
    try:
        a = _client(srv)
        cguid = uuid.uuid4()
        r = a.call(c.CREATE, c.create_body("held.dat", access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF,
                                           share=0, contexts=_dh2q(cguid)))
        assert r.status == 0
        fid = r.file_id
        assert a.call(c.WRITE, c.write_body(fid, b"mine")).status == 0
        worker = srv.worker_pids()[-1]
        os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: not alive(worker), 10)

        other = _client(srv)
        for access in (c.READ_ACCESS, c.READ_WRITE_ACCESS):
            r = other.call(c.CREATE, c.create_body("held.dat", access=access))
            assert r.status == STATUS_SHARING_VIOLATION, hex(r.status)
        stat = other.call(c.CREATE, c.create_body("held.dat", access=FILE_READ_ATTRIBUTES))
        assert stat.status == 0
        assert other.call(c.CLOSE, c.close_body(stat.file_id)).status == 0
        # Overwriting is refused before anything is truncated.
        r = other.call(c.CREATE, c.create_body("held.dat", access=c.READ_WRITE_ACCESS, disposition=FILE_OVERWRITE_IF))
        assert r.status == STATUS_SHARING_VIOLATION
        assert (srv.share.parent / "ca" / "held.dat").read_bytes() == b"mine"

        b, r = _reconnect(srv, fid, cguid)
        assert r.status == 0, hex(r.status)
        fid_b = r.file_id
        assert other.call(c.CREATE, c.create_body("held.dat", access=c.READ_ACCESS)).status == STATUS_SHARING_VIOLATION
        assert b.call(c.CLOSE, c.close_body(fid_b)).status == 0
        r = other.call(c.CREATE, c.create_body("held.dat", access=c.READ_WRITE_ACCESS))
        assert r.status == 0, hex(r.status)
    finally:
        srv.stop()


@pytest.mark.peer
def test_persistent_flag_is_ignored_on_a_share_without_continuous_availability(tmp_path):
    srv = Smbdd(tmp_path)
    try:
        a = c.RawClient("127.0.0.1", srv.port, timeout=15)
        neg = a.negotiate()
        assert not struct.unpack_from("<I", neg.body, 24)[0] & GLOBAL_CAP_PERSISTENT_HANDLES
        a.session_setup(USER, PASSWORD)
        a.tree_connect("data")
        r = a.call(c.CREATE, c.create_body("x.dat", access=c.READ_WRITE_ACCESS, disposition=c.FILE_OPEN_IF,
                                           contexts=_dh2q(uuid.uuid4())))
        assert r.status == 0 and b"DH2Q" not in response_contexts(r)  # no oplock: not even durable
    finally:
        srv.stop()
