"""The state store (smbd.store) and what smbdd keeps in it across restarts (smbdd.state)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from smbd.store import LmdbStore, MemoryStore, open_persistent, open_volatile
from smbdd.state import StateError, make_runtime_dir, stable_server_guid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str, wait: bool = True):
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if wait:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, timeout=60)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else open_volatile(tmp_path / "run")
    yield s
    s.close()


def test_update_get_items_delete(store):
    assert store.get("opens", "1") is None
    assert store.update("opens", "1", lambda old: {"n": (old or {}).get("n", 0) + 1}) == {"n": 1}
    assert store.update("opens", "1", lambda old: {"n": old["n"] + 1}) == {"n": 2}
    store.put("opens", "2", {"pid": 7})
    store.put("sessions", "2", {"pid": 8})  # tables are apart
    assert dict(store.items("opens")) == {"1": {"n": 2}, "2": {"pid": 7}}
    assert store.delete_where("opens", lambda r: r.get("pid") == 7) == 1
    assert dict(store.items("opens")) == {"1": {"n": 2}}
    assert store.get("sessions", "2") == {"pid": 8}
    store.delete("opens", "1")
    store.delete("opens", "missing")  # nothing to delete is no error
    assert list(store.items("opens")) == []


def test_unknown_table_is_an_error_not_a_new_table(tmp_path):
    store = open_volatile(tmp_path / "run")
    with pytest.raises(KeyError, match="no table 'nope'"):
        store.get("nope", "k")
    store.close()


def test_damaged_record_reads_as_absent(tmp_path):
    store = open_volatile(tmp_path / "run")
    with store.env.begin(write=True, db=store._db("opens")) as txn:
        txn.put(b"bad", b"{not json")
        txn.put(b"list", b"[1, 2]")
    assert store.get("opens", "bad") is None and store.get("opens", "list") is None
    assert list(store.items("opens")) == []
    assert store.update("opens", "bad", lambda old: {"fixed": old is None}) == {"fixed": True}
    store.close()


def test_updates_from_two_processes_are_atomic(tmp_path):
    """Two processes each add 300 to one record: none of the 600 read-modify-writes is lost."""
    folder = tmp_path / "run"
    open_volatile(folder).close()
    code = """
        import sys
        from smbd.store import open_volatile
        s = open_volatile(sys.argv[1])
        for _ in range(300):
            s.update("opens", "counter", lambda old: {"n": (old or {"n": 0})["n"] + 1})
    """
    procs = [_python(code, str(folder), wait=False) for _ in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    store = open_volatile(folder)
    assert store.get("opens", "counter") == {"n": 600}
    store.close()


def test_writer_killed_inside_a_transaction_does_not_hold_the_lock(tmp_path):
    """A worker killed with -9 in the middle of a write (LMDB's robust mutex): the next
    writer gets the lock, and the killed one's half-done change is not there."""
    folder = tmp_path / "run"
    open_volatile(folder).close()
    code = """
        import sys, time
        from smbd.store import open_volatile
        s = open_volatile(sys.argv[1])
        with s.env.begin(write=True, db=s._db("opens")) as txn:
            txn.put(b"half", b'{"done": false}')
            print("in", flush=True)
            time.sleep(60)
    """
    child = _python(code, str(folder), wait=False)
    assert child.stdout.readline().strip() == "in"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    store = open_volatile(folder)
    start = time.monotonic()
    assert store.update("opens", "after", lambda old: {"ok": True}) == {"ok": True}
    assert time.monotonic() - start < 5
    assert store.get("opens", "half") is None
    store.close()


def test_persistent_records_survive_a_reopen(tmp_path):
    store = open_persistent(tmp_path / "store")
    store.put("server", "guid", {"guid": "x"})
    store.close()
    again = open_persistent(tmp_path / "store")
    assert again.get("server", "guid") == {"guid": "x"}
    again.close()
    assert isinstance(again, LmdbStore)


def test_server_guid_is_stable_across_starts(tmp_path):
    first = stable_server_guid(tmp_path)
    assert first.int != 0
    assert stable_server_guid(tmp_path) == first
    # as another process (a restarted smbdd) sees it
    out = _python("import sys, pathlib; from smbdd.state import stable_server_guid;"
                  "print(stable_server_guid(pathlib.Path(sys.argv[1])))", str(tmp_path)).stdout
    assert uuid.UUID(out.strip()) == first
    assert stable_server_guid(tmp_path / "other") != first  # another state directory, another server


def test_damaged_server_guid_is_replaced(tmp_path):
    store = open_persistent(tmp_path / "store")
    store.put("server", "guid", {"guid": "not-a-guid"})
    store.close()
    assert stable_server_guid(tmp_path).int != 0


def test_unusable_state_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=f"state directory {blocker}"):
        stable_server_guid(blocker)


def test_runtime_dirs_of_gone_smbdd_are_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"smbdd-run-{dead.pid}"
    left.mkdir()
    (left / "data.mdb").write_bytes(b"x")
    mine = make_runtime_dir(tmp_path)
    assert mine == tmp_path / f"smbdd-run-{os.getpid()}"
    assert mine.stat().st_mode & 0o777 == 0o700
    assert not left.exists()
    live = tmp_path / "smbdd-run-1"  # pid 1 is alive: its folder stays
    live.mkdir()
    make_runtime_dir(tmp_path)
    assert live.exists()


def test_scan_reads_one_prefix_and_count(store):
    """The caching table is read by file: ``scan`` must return that file's records only."""
    store.put("caching", "12/100", {"pid": 100})
    store.put("caching", "12/200", {"pid": 200})
    store.put("caching", "123/100", {"pid": 100})  # another file whose key starts alike
    store.put("caching", "13/100", {"pid": 100})
    assert [k for k, _ in store.scan("caching", "12/")] == ["12/100", "12/200"]
    assert store.scan("caching", "99/") == []
    assert store.count("caching") == 4
    assert store.delete_where("caching", lambda r: r["pid"] == 100) == 3
    assert store.count("caching") == 1
