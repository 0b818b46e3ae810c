"""What one SMB2 open+close costs in each candidate state store (issue 11).

An open adds an entry to its file's record in the global open table and a close removes it,
each a read-modify-write under the store's lock, as Samba's locking.tdb does. Measured for
Samba's TDB (Debian python3-tdb), LMDB (PyPI lmdb) and SQLite in WAL mode (the standard
library), each on tmpfs for volatile records and on the state directory's disk for
persistent ones (which must reach stable storage before the reply), and with two processes
doing it at once on one record, as two workers opening one file would.

    python -m bench.store_backends [--n 20000] [--disk /var/lib/smbdd]

Prints microseconds per open+close and the ratio to the fastest backend.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sqlite3
import struct
import tempfile
import time

ENTRY = struct.Struct("<QQI")  # persistent id, worker pid, share access


class TdbBackend:
    name = "tdb"

    def __init__(self, folder: str, durable: bool):
        import tdb

        flags = 0 if durable else tdb.NOSYNC
        self.durable = durable
        self.db = tdb.Tdb(os.path.join(folder, "opens.tdb"), 0, flags, os.O_RDWR | os.O_CREAT, 0o600)

    def update(self, key: bytes, fn) -> None:
        if not self.durable:
            # Samba's volatile databases use a chain lock, not a transaction; the Python
            # binding has no chain lock, so the whole-database lock stands in for it.
            self.db.lock_all()
            try:
                old = self.db.get(key)
                new = fn(old)
                if new:
                    self.db.store(key, new)
                elif old is not None:
                    self.db.delete(key)
            finally:
                self.db.unlock_all()
            return
        self.db.transaction_start()
        try:
            old = self.db.get(key)
            new = fn(old)
            if new:
                self.db.store(key, new)
            elif old is not None:
                self.db.delete(key)
            self.db.transaction_commit()
        except BaseException:
            self.db.transaction_cancel()
            raise


class LmdbBackend:
    name = "lmdb"

    def __init__(self, folder: str, durable: bool):
        import lmdb

        self.env = lmdb.open(folder, map_size=1 << 28, subdir=True, sync=durable, metasync=durable,
                             max_dbs=4, lock=True)
        self.db = self.env.open_db(b"opens")

    def update(self, key: bytes, fn) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            old = txn.get(key)
            new = fn(old)
            if new:
                txn.put(key, new)
            elif old is not None:
                txn.delete(key)


class SqliteBackend:
    name = "sqlite-wal"

    def __init__(self, folder: str, durable: bool):
        self.db = sqlite3.connect(os.path.join(folder, "opens.sqlite"), isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self.db.execute("CREATE TABLE IF NOT EXISTS opens (k BLOB PRIMARY KEY, v BLOB)")

    def update(self, key: bytes, fn) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT v FROM opens WHERE k=?", (key,)).fetchone()
            old = row[0] if row else None
            new = fn(old)
            if new:
                db.execute("INSERT OR REPLACE INTO opens VALUES (?, ?)", (key, new))
            elif old is not None:
                db.execute("DELETE FROM opens WHERE k=?", (key,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


BACKENDS = {b.name: b for b in (TdbBackend, LmdbBackend, SqliteBackend)}


def open_close(store, key: bytes, pid: int, n: int) -> float:
    """n opens+closes of one file; seconds taken."""
    start = time.perf_counter()
    for i in range(n):
        entry = ENTRY.pack(i, pid, 7)
        store.update(key, lambda old: (old or b"") + entry)
        store.update(key, lambda old: (old or b"").replace(entry, b"", 1))
    return time.perf_counter() - start


def _child(name: str, folder: str, durable: bool, n: int, out) -> None:
    store = BACKENDS[name](folder, durable)
    out.put(open_close(store, b"file:1", os.getpid(), n))


def measure(name: str, folder: str, durable: bool, n: int, procs: int) -> float:
    """Microseconds per open+close, seen by each of ``procs`` processes at once."""
    BACKENDS[name](folder, durable)  # create the files before the race
    if procs == 1:
        return open_close(BACKENDS[name](folder, durable), b"file:1", os.getpid(), n) / n * 1e6
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    children = [ctx.Process(target=_child, args=(name, folder, durable, n, out)) for _ in range(procs)]
    for c in children:
        c.start()
    times = [out.get() for _ in children]
    for c in children:
        c.join()
    return max(times) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--disk", default=None, help="folder on disk for the persistent case")
    args = parser.parse_args()
    places = [("tmpfs, volatile", "/dev/shm", False, args.n)]
    places.append(("disk, synced", args.disk or tempfile.gettempdir(), True, max(args.n // 50, 100)))
    for label, base, durable, n in places:
        for procs in (1, 2):
            results = {}
            for name in BACKENDS:
                folder = tempfile.mkdtemp(prefix=f"smbdd-bench-{name}-", dir=base)
                try:
                    results[name] = measure(name, folder, durable, n, procs)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            best = min(results.values())
            print(f"{label}, {procs} process{'es' if procs > 1 else ''} on one record ({n} each):")
            for name, us in results.items():
                print(f"  {name:11s} {us:9.1f} us per open+close   {us / best:5.2f} x fastest")


if __name__ == "__main__":
    main()
