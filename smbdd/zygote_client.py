"""smbdd's side of the zygote (smbd.zygote): start it, ask it for workers, learn how they end.

A forked worker is the zygote's child, not smbdd's, so it is not an asyncio subprocess;
``ForkedWorker`` offers what the supervisor uses of one (pid, returncode, wait, kill). Its
end is seen through a pidfd (readable when the process exits, whoever its parent is) and its
exit code comes from the zygote, which reaps it. Should the zygote itself be gone, the
supervisor starts workers the old way (``python -m smbd.worker``), and the code of a worker
forked before is unknown (UNKNOWN, logged as a worker that died).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections import deque

from smbd.control import recv_record, send_record

log = logging.getLogger("smbdd.zygote")
UNKNOWN = 255  # the returncode of a worker whose end the zygote could not report


class ForkedWorker:
    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._code: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pidfd = os.pidfd_open(pid)
        self._ended = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = -1
        self._ended.set()

    def reaped(self, code: int) -> None:
        if not self._code.done():
            self._code.set_result(code)

    def zygote_gone(self) -> None:
        self.reaped(UNKNOWN)

    async def wait(self) -> int:
        await self._ended.wait()
        try:
            # The zygote reaps it right after it ended; its report is a moment behind.
            code = await asyncio.wait_for(asyncio.shield(self._code), 5)
        except asyncio.TimeoutError:
            code = UNKNOWN
        self.returncode = code
        return code

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Zygote:
    def __init__(self, log_level: str, log_file: str | None):
        self.log_level, self.log_file = log_level, log_file
        self.proc: asyncio.subprocess.Process | None = None
        self.control: socket.socket | None = None
        self._pending: deque[asyncio.Future] = deque()
        self._workers: dict[int, ForkedWorker] = {}

    @property
    def alive(self) -> bool:
        return self.control is not None

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smbd.zygote", "--control-fd", str(child.fileno()), "--log-level", self.log_level,
            *(["--log-file", self.log_file] if self.log_file else []), pass_fds=[child.fileno()])
        child.close()
        parent.setblocking(False)
        self.control = parent
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_control)
        log.info("zygote %d started: workers are forked from it", self.proc.pid)

    async def fork(self, worker_end: socket.socket) -> ForkedWorker:
        if self.control is None:
            raise OSError("the zygote is gone")
        waiter = asyncio.get_running_loop().create_future()
        self._pending.append(waiter)
        send_record(self.control, {"op": "fork"}, [worker_end.fileno()])
        pid = await waiter
        worker = ForkedWorker(pid)
        self._workers[pid] = worker
        return worker

    def _on_control(self) -> None:
        while self.control is not None:
            try:
                record, fds = recv_record(self.control)
            except BlockingIOError:
                return
            except (OSError, ValueError):
                record, fds = None, []
            for fd in fds:
                os.close(fd)
            if record is None:
                self._gone()
                return
            op = record.get("op")
            if op in ("forked", "fork-failed") and self._pending:
                waiter = self._pending.popleft()
                if not waiter.done():
                    if op == "forked":
                        waiter.set_result(int(record["pid"]))
                    else:
                        waiter.set_exception(OSError(record.get("error", "fork failed")))
            elif op == "exited":
                worker = self._workers.pop(int(record["pid"]), None)
                if worker is not None:
                    worker.reaped(int(record["code"]))

    def _gone(self) -> None:
        log.error("the zygote is gone; workers are started as new processes from now on")
        asyncio.get_running_loop().remove_reader(self.control.fileno())
        self.control.close()
        self.control = None
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(OSError("the zygote is gone"))
        for worker in self._workers.values():
            worker.zygote_gone()
        self._workers.clear()

    async def close(self) -> None:
        if self.control is not None:
            asyncio.get_running_loop().remove_reader(self.control.fileno())
            self.control.close()
            self.control = None
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
