"""The state store that the daemon and every worker of one smbdd open (issue 11).

Clients served by different workers still make one server, so state several of them share
lives here rather than in a worker's memory, as Samba keeps it in its TDB databases. The
tables follow MS-SMB2 3.3.1: ``sessions`` (3.3.1.5 GlobalSessionTable), ``opens``
(3.3.1.5 GlobalOpenTable: durable opens, who holds them and for how long) and ``server``
(the ServerGuid, which must not change across restarts, 3.3.1.5).

Two stores: a volatile one on tmpfs, made empty at each start of smbdd, and a persistent one
in the state directory whose commits reach stable storage before they return (the records
a reply depends on must survive a crash, MS-SMB2 3.3.5.9.10 persistent handles).

The backend is LMDB (the ``lmdb`` binding). bench/store_backends.py measured one open+close
(a read-modify-write adding and then removing an entry in one file's record) on this host:
volatile on tmpfs, TDB 4.7 us (its Python binding has no chain lock, so a whole-database
lock), LMDB 6.9 us, SQLite WAL 24 us; two processes on one record 11.6 / 16.2 / 51 us;
persistent, synced to disk, SQLite 304 us, LMDB 397 us, TDB (transactions) 1338 us. LMDB is
within 1.5x of the best in every case, one library for both stores; its readers never block
(``smbdd status`` reads while workers write) and a writer killed with -9 does not leave the
write lock held (robust mutexes), which a crash-proof server needs.

Records are JSON objects. Everything goes through the ``StateStore`` interface, so a
clustered backend on an existing distributed engine can stand in later; ``MemoryStore`` is
the one-process backend of in-process servers (unit tests).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Callable, Iterator

Record = dict
Update = Callable[[Record | None], Record | None]

VOLATILE_TABLES = ("sessions", "opens", "caching", "delete_pending")
PERSISTENT_TABLES = ("server", "persistent_opens")  # smbd.server.persistent


def pid_alive(pid: int) -> bool:
    """Whether the process a record names still runs (records carry the pid of their holder)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def process_started(pid: int) -> float | None:
    """When the process started (psutil: from /proc/PID/stat), None if it has ended (a
    zombie has ended too). With the pid it names one process for good: a record that outlives
    its holder, even across a reboot, is not taken for a process that got the pid later."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(proc.create_time(), 2)
    except psutil.Error:
        return None


def holder_alive(pid: int | None, started: float | None) -> bool:
    """Whether the holder a record names (pid, and its start time if recorded) still runs."""
    if pid is None:
        return False
    now_started = process_started(pid)
    return now_started is not None and (started is None or now_started == started)


class StateStore:
    """Tables of JSON records by string key; ``update`` is atomic between processes."""

    def get(self, table: str, key: str) -> Record | None:
        raise NotImplementedError

    def update(self, table: str, key: str, fn: Update) -> Record | None:
        """Replace the record with ``fn(record)`` (None deletes it) under the store's lock;
        the new record."""
        raise NotImplementedError

    def items(self, table: str) -> Iterator[tuple[str, Record]]:
        raise NotImplementedError

    def count(self, table: str) -> int:
        return sum(1 for _ in self.items(table))

    def scan(self, table: str, prefix: str) -> list[tuple[str, Record]]:
        """The records whose key starts with ``prefix``, in key order."""
        return sorted((k, r) for k, r in self.items(table) if k.startswith(prefix))

    def close(self) -> None:
        pass

    def put(self, table: str, key: str, record: Record) -> None:
        self.update(table, key, lambda _old: record)

    def delete(self, table: str, key: str) -> None:
        self.update(table, key, lambda _old: None)

    def delete_where(self, table: str, pred: Callable[[Record], bool]) -> int:
        """Delete every record ``pred`` picks (a dead worker's, say); how many went."""
        gone = 0
        for key, record in list(self.items(table)):
            if pred(record):
                self.update(table, key, lambda old: None if old is not None and pred(old) else old)
                gone += 1
        return gone


class MemoryStore(StateStore):
    """One process's store, for servers that have no other process to share with."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def get(self, table: str, key: str) -> Record | None:
        text = self._tables.get(table, {}).get(key)
        return None if text is None else json.loads(text)

    def update(self, table: str, key: str, fn: Update) -> Record | None:
        with self._lock:
            rows = self._tables.setdefault(table, {})
            old = rows.get(key)
            new = fn(None if old is None else json.loads(old))
            if new is None:
                rows.pop(key, None)
            else:
                rows[key] = json.dumps(new)
            return new

    def items(self, table: str) -> Iterator[tuple[str, Record]]:
        for key, text in list(self._tables.get(table, {}).items()):
            yield key, json.loads(text)


class LmdbStore(StateStore):
    """An LMDB environment in ``folder`` (made 0700: sessions hold signing keys)."""

    MAP_SIZE = 1 << 30  # address space only: the files grow as records are written

    def __init__(self, folder: Path | str, tables: tuple[str, ...], *, durable: bool):
        import lmdb

        self._lmdb = lmdb
        folder = Path(folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        self.folder = folder
        # sync/metasync: a persistent commit is on disk when it returns; a volatile one lives
        # on tmpfs, where there is nothing to sync. Worker threads each use their own
        # transactions, so readers are tied to transactions, not threads (lock=True keeps
        # the readers' table shared between processes).
        self.env = lmdb.open(str(folder), map_size=self.MAP_SIZE, max_dbs=len(tables) + 1, subdir=True,
                             sync=durable, metasync=durable, lock=True, mode=0o600, max_readers=512)
        self._dbs = {t: self.env.open_db(t.encode()) for t in tables}

    def _db(self, table: str):
        try:
            return self._dbs[table]
        except KeyError:
            raise KeyError(f"no table {table!r} in {self.folder}") from None

    def get(self, table: str, key: str) -> Record | None:
        with self.env.begin(db=self._db(table)) as txn:
            data = txn.get(key.encode())
        return _decode(data)

    def update(self, table: str, key: str, fn: Update) -> Record | None:
        k = key.encode()
        with self.env.begin(write=True, db=self._db(table)) as txn:
            new = fn(_decode(txn.get(k)))
            if new is None:
                txn.delete(k)
            else:
                txn.put(k, json.dumps(new).encode())
        return new

    def items(self, table: str) -> Iterator[tuple[str, Record]]:
        with self.env.begin(db=self._db(table)) as txn:
            rows = [(k.decode(), _decode(v)) for k, v in txn.cursor()]
        for key, record in rows:
            if record is not None:
                yield key, record

    def count(self, table: str) -> int:
        with self.env.begin(db=self._db(table)) as txn:
            return txn.stat(self._db(table))["entries"]

    def scan(self, table: str, prefix: str) -> list[tuple[str, Record]]:
        # A range read from the first key >= prefix: only the matching records are decoded.
        p = prefix.encode()
        out = []
        with self.env.begin(db=self._db(table)) as txn:
            cursor = txn.cursor()
            if cursor.set_range(p):
                for k, v in cursor:
                    if not k.startswith(p):
                        break
                    record = _decode(v)
                    if record is not None:
                        out.append((k.decode(), record))
        return out

    def clear(self) -> None:
        """Empty every table (the volatile store at a start of smbdd)."""
        with self.env.begin(write=True) as txn:
            for db in self._dbs.values():
                txn.drop(db, delete=False)

    def sweep_readers(self) -> int:
        """Free reader slots of processes that died inside a read."""
        return self.env.reader_check()

    def close(self) -> None:
        self.env.close()


def _decode(data: bytes | None) -> Record | None:
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None  # a damaged record reads as absent, never as a crash
    return record if isinstance(record, dict) else None


def open_volatile(folder: str | Path | None) -> StateStore:
    """The volatile store of the smbdd whose runtime folder this is (None: in-process)."""
    if not folder:
        return MemoryStore()
    return LmdbStore(Path(folder), VOLATILE_TABLES, durable=False)


def open_persistent(folder: str | Path) -> LmdbStore:
    return LmdbStore(Path(folder), PERSISTENT_TABLES, durable=True)
