"""Worker processes, one per client (ClientGUID), as Samba forks one smbd per client.

A worker's crash loses only that client's connections; it is logged with its cause and
the next connection of that client gets a fresh worker.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from smbd import metrics
from smbd.control import recv_record, send_record
from smbd.server.config import ServerConfig
from smbd.server import persistent
from smbd.store import VOLATILE_TABLES, open_persistent, open_volatile

from .zygote_client import ForkedWorker, Zygote

log = logging.getLogger("smbdd.supervisor")
PERSISTENT_SWEEP = 10.0  # seconds between deletions of expired persistent handles


@dataclass(eq=False)
class WorkerHandle:
    key: uuid.UUID | None  # the ClientGUID it serves; None for clients without one
    proc: "asyncio.subprocess.Process | ForkedWorker"  # pid, returncode, wait(), kill()
    control: socket.socket
    sent: int = 0  # records sent since start: an "idle" that saw fewer is stale
    connections: int = 0
    exiting: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    """Starts, routes to and reaps workers.

    ``spares`` workers are kept started ahead of need: a new client's first NEGOTIATE is
    answered by an already-running process instead of waiting for Python to start one
    (about 0.2 s on the host, tens of seconds under the lab VM's emulation, where a
    client gives up after 30 s).
    """

    def __init__(self, config: ServerConfig, log_level: str = "INFO", spares: int = 1, log_file: str | None = None):
        self.config = config
        self.log_level = log_level
        self.log_file = log_file
        self.by_guid: dict[uuid.UUID, WorkerHandle] = {}
        self.workers: set[WorkerHandle] = set()
        self.spare_target = spares
        self.spares: list[WorkerHandle] = []
        self._refilling = False
        self.stopping = False
        self.crashes = 0
        self.store = open_volatile(config.runtime_dir)  # smbd.store, shared with the workers
        # Persistent handles (smbd.server.persistent) live on disk across runs.
        self.persistent_store = (open_persistent(Path(config.state_dir) / "store")
                                 if config.state_dir else None)
        self._expiry: asyncio.Task | None = None
        self.zygote: Zygote | None = None
        self._status_ids = itertools.count(1)
        self._status_waiters: dict[int, asyncio.Future] = {}

    async def start(self) -> None:
        if self.persistent_store is not None:
            # What no live process holds waits for its reconnect from now on, for its
            # timeout (a worker of the earlier run may still be winding down: the sweep
            # stamps its records once it has exited).
            now = time.time()
            waiting = persistent.orphan(self.persistent_store, None, now)
            gone = persistent.expire(self.persistent_store, now)
            if waiting or gone:
                log.info("persistent handles of an earlier run: %d wait for their clients, %d expired",
                         waiting, gone)
            self._expiry = asyncio.get_running_loop().create_task(self._expire_persistent())
        self.zygote = Zygote(self.log_level, self.log_file)
        try:
            await self.zygote.start()
        except OSError as e:
            log.warning("no zygote (%s): each worker starts as a new process", e)
            self.zygote = None
        await self._refill()

    async def _expire_persistent(self) -> None:
        while not self.stopping:
            await asyncio.sleep(PERSISTENT_SWEEP)
            try:
                now = time.time()
                # A worker of an earlier run that outlived it has exited by now, maybe.
                persistent.orphan(self.persistent_store, None, now)
                gone = persistent.expire(self.persistent_store, now)
            except Exception as e:
                log.warning("cannot expire persistent handles: %s", e)
                continue
            if gone:
                log.info("%d persistent handle(s) expired without a reconnect", gone)

    async def _refill(self) -> None:
        if self._refilling:
            return
        self._refilling = True
        try:
            while len(self.spares) < self.spare_target and not self.stopping:
                self.spares.append(await self._start_worker(None, spare=True))
        finally:
            self._refilling = False

    async def _worker_for(self, key: uuid.UUID | None) -> WorkerHandle:
        """A spare (refilled in the background) if one is alive, else a new worker."""
        while self.spares:
            handle = self.spares.pop(0)
            if handle.proc.returncode is None and not handle.exiting:
                handle.key = key
                if key is not None:
                    self.by_guid[key] = handle
                log.info("worker %d serves client %s", handle.proc.pid, key or "(no ClientGUID)")
                asyncio.get_running_loop().create_task(self._refill())
                return handle
        return await self._start_worker(key)

    async def _start_worker(self, key: uuid.UUID | None, spare: bool = False) -> WorkerHandle:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = None
        if self.zygote is not None and self.zygote.alive:
            try:
                proc = await self.zygote.fork(child)  # smbd.zygote: a fork of a loaded process
            except OSError as e:
                log.warning("the zygote did not fork a worker (%s); starting a new process", e)
        if proc is None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "smbd.worker", "--control-fd", str(child.fileno()),
                "--log-level", self.log_level, *(["--log-file", self.log_file] if self.log_file else []),
                pass_fds=[child.fileno()])
        child.close()
        parent.setblocking(False)
        handle = WorkerHandle(key, proc, parent)
        self.workers.add(handle)
        if key is not None:
            self.by_guid[key] = handle
        self._send(handle, {"op": "config", "config": self.config.to_json()})
        loop = asyncio.get_running_loop()
        loop.add_reader(parent.fileno(), self._on_control, handle)
        loop.create_task(self._watch(handle))
        log.info("worker %d started%s", proc.pid, " as a spare" if spare else "")
        if not spare:
            log.info("worker %d serves client %s", proc.pid, key or "(no ClientGUID)")
        return handle

    def reconfigure(self, config: ServerConfig) -> None:
        """A reload (SIGHUP): every worker, spares too, takes the new shares, users and access
        lists for what comes next; connected clients stay. Workers started later get it
        with their first record."""
        self.config = config
        for handle in list(self.workers):
            if handle.proc.returncode is None and not handle.exiting:
                try:
                    self._send(handle, {"op": "reconfigure", "config": config.to_json()})
                except OSError as e:  # a worker on its way out; its clients are gone with it
                    log.warning("worker %d did not take the new configuration: %s", handle.proc.pid, e)

    async def status(self, timeout: float = 3.0) -> list[dict]:
        """Every serving worker's snapshot (smbd.server.status); a worker that does not
        answer in time is listed with the reason."""
        loop = asyncio.get_running_loop()
        asked = []
        for handle in list(self.workers):
            if handle.proc.returncode is not None or handle.exiting or handle in self.spares:
                continue
            request_id = next(self._status_ids)
            waiter = self._status_waiters[request_id] = loop.create_future()
            try:
                self._send(handle, {"op": "status", "id": request_id})
            except OSError:
                self._status_waiters.pop(request_id, None)
                continue
            asked.append((handle, request_id, waiter))
        async def answer(handle: WorkerHandle, request_id: int, waiter: asyncio.Future) -> dict:
            try:
                return await asyncio.wait_for(waiter, timeout)
            except asyncio.TimeoutError:
                self._status_waiters.pop(request_id, None)
                return {"pid": handle.proc.pid, "error": "did not answer"}

        return list(await asyncio.gather(*(answer(*a) for a in asked)))  # one timeout for all, not one each

    def _send(self, handle: WorkerHandle, record: dict, fds: list[int] = ()) -> None:
        send_record(handle.control, {**record, "seq": handle.sent}, fds)
        handle.sent += 1

    def _on_control(self, handle: WorkerHandle) -> None:
        while True:
            try:
                record, fds = recv_record(handle.control)
            except BlockingIOError:
                return
            except (OSError, ValueError):
                record, fds = None, []
            if record is not None and record.get("op") == "send":
                self._forward(handle, record, fds)
                continue
            for fd in fds:
                os.close(fd)
            if record is None:
                asyncio.get_running_loop().remove_reader(handle.control.fileno())
                return
            if record.get("op") == "status":
                waiter = self._status_waiters.pop(record.get("id"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(record.get("status") or {})
            elif record.get("op") == "ready":
                log.info("worker %d ready", handle.proc.pid)
            elif record.get("op") == "idle" and not handle.exiting:
                # Retire the worker only if it has seen everything we sent it.
                if record.get("seen", handle.sent) >= handle.sent:
                    self._retire(handle)
                    self._send(handle, {"op": "exit"})

    def _forward(self, sender: WorkerHandle, record: dict, fds: list[int]) -> None:
        """A worker's message to another worker (smbd.server.messaging); an addressee that
        is not one of ours gets the sender an error answer, never silence."""
        body = record.get("body") if isinstance(record.get("body"), dict) else {}
        target = next((h for h in self.workers if h.proc.pid == record.get("to")
                       and h.proc.returncode is None), None)
        try:
            if target is not None:
                try:
                    self._send(target, {"op": "message", "from": sender.proc.pid, "body": body}, fds)
                    return
                except OSError as e:
                    error = f"cannot reach worker {target.proc.pid}: {e}"
            else:
                error = f"no worker {record.get('to')}"
            if "id" in body:
                self._send(sender, {"op": "message", "from": 0, "body": {"reply_to": body["id"], "error": error}})
        except OSError as e:
            log.warning("cannot answer worker %d: %s", sender.proc.pid, e)
        finally:
            for fd in fds:
                os.close(fd)

    def _retire(self, handle: WorkerHandle) -> None:
        handle.exiting = True
        if handle in self.spares:
            self.spares.remove(handle)
        if handle.key is not None and self.by_guid.get(handle.key) is handle:
            del self.by_guid[handle.key]

    async def _watch(self, handle: WorkerHandle) -> None:
        code = await handle.proc.wait()
        self._retire(handle)
        self.workers.discard(handle)
        try:
            asyncio.get_running_loop().remove_reader(handle.control.fileno())
        except (ValueError, OSError):
            pass
        handle.control.close()
        self._forget_records_of(handle.proc.pid)
        handle.done.set()
        metrics.worker_gone(handle.proc.pid)
        if code == 0:
            log.info("worker %d exited", handle.proc.pid)
        else:
            self.crashes += 1
            metrics.worker_crashed(handle.proc.pid)
            cause = (f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
            log.error("worker %d for client %s died (%s); its connections are lost, smbdd goes on",
                      handle.proc.pid, handle.key or "(no ClientGUID)", cause)

    def _forget_records_of(self, pid: int) -> None:
        """A worker that is gone holds no session and no open any more: whatever it left in
        the store (killed, it withdrew nothing) must not be found by the others."""
        for table in VOLATILE_TABLES:  # every volatile record names the worker it is of
            try:
                self.store.delete_where(table, lambda r: r.get("pid") == pid)
            except Exception as e:
                log.warning("cannot remove worker %d's %s records: %s", pid, table, e)
        if self.persistent_store is not None:
            try:  # its persistent handles now wait for a reconnect, for their timeout
                persistent.orphan(self.persistent_store, pid, time.time())
            except Exception as e:
                log.warning("cannot keep worker %d's persistent handles: %s", pid, e)

    async def hand_over(self, key: uuid.UUID | None, record: dict, fd: int) -> None:
        """Give a connection (TCP socket or proxy channel) to the worker that owns the client."""
        if self.stopping:
            os.close(fd)
            return
        handle = self.by_guid.get(key) if key is not None else None
        if handle is None or handle.exiting or handle.proc.returncode is not None:
            handle = await self._worker_for(key)
        try:
            self._send(handle, record, [fd])
        except OSError as e:
            log.error("could not pass connection to worker %d: %s", handle.proc.pid, e)
            self._retire(handle)
        finally:
            os.close(fd)

    async def shutdown(self, grace: float) -> None:
        """Tell every worker to finish in-flight requests and exit; kill the ones that do not."""
        self.stopping = True
        for handle in list(self.workers):
            try:
                self._send(handle, {"op": "shutdown"})
            except OSError:
                pass
        waits = [h.done.wait() for h in self.workers]
        if waits:
            done, pending = await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=grace)
            for handle in list(self.workers):
                if handle.proc.returncode is None:
                    log.warning("worker %d did not stop in time; killing it", handle.proc.pid)
                    handle.proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self.zygote is not None:
            await self.zygote.close()
        # The volatile store dies with the workers; nothing of this run is left in /dev/shm.
        if self._expiry is not None:
            self._expiry.cancel()
        if self.persistent_store is not None:
            self.persistent_store.close()
        self.store.close()
        if self.config.runtime_dir:
            shutil.rmtree(self.config.runtime_dir, ignore_errors=True)
