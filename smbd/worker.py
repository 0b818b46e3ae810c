"""The worker process: serves every channel of one client (one ClientGUID).

smbdd starts it with one end of a SOCK_SEQPACKET pair (see smbd.control) and passes it
connected TCP sockets, or Unix sockets on which the RDMA proxy relays an SMB Direct
connection. I/O that may wait for a disk runs on a small thread pool. The event loop does the
protocol work, reads from the page cache, and a buffered write when that write is the worker's
only request (ServerState.read_into, write_from).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket

from smbd import logsetup
from smbd.control import recv_record, send_record
from smbd.server.config import ServerConfig
from smbd.server.connection import SmbConnection
from smbd.server import caching, channel_move
from smbd.server.handoff import serve_requests
from smbd.server.messaging import Messenger
from smbd.server.oplocks import block_lease_signals
from smbd.server.state import ServerState
from smbd.transport.tcp import MAX_IN_FLIGHT, TcpTransport

log = logging.getLogger("smbd.worker")
SHUTDOWN_GRACE = 10.0  # seconds in-flight requests get to finish on SIGTERM/shutdown


class Worker:
    def __init__(self, control: socket.socket):
        self.control = control
        self.server: ServerState | None = None
        self.done = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.idle_reported = False
        self.seen = 0  # control records processed; smbdd retires us only if we saw them all
        self.stopping = False

    def start(self) -> None:
        self.control.setblocking(False)
        self.loop.add_reader(self.control.fileno(), self._on_control)

    def _on_control(self) -> None:
        while True:
            try:
                record, fds = recv_record(self.control)
            except BlockingIOError:
                return
            except (OSError, ValueError) as e:
                log.error("control channel broken: %s", e)
                record, fds = None, []
            if record is None:
                log.info("smbdd went away; shutting down")
                self.loop.create_task(self.shutdown())
                self.loop.remove_reader(self.control.fileno())
                return
            self._dispatch(record, fds)

    def _dispatch(self, record: dict, fds: list[int]) -> None:
        self.seen += 1
        op = record.get("op")
        if op == "config":
            self.server = ServerState(ServerConfig.from_json(record["config"]))
            self.server.oplocks.start(self.loop)
            self.server.messenger = Messenger(lambda rec, fds: send_record(self.control, rec, fds))
            serve_requests(self.server)
            caching.serve_requests(self.server)
            channel_move.serve_requests(self.server, self._open_moved_channel)
            send_record(self.control, {"op": "ready"})
        elif op == "status":
            self._send_status(record.get("id"))
        elif op == "reconfigure" and self.server is not None:
            self.server.reconfigure(ServerConfig.from_json(record["config"]))
        elif op == "message" and self.server is not None and self.server.messenger is not None:
            self.server.messenger.deliver(record, fds)
        elif op == "tcp" and self.server is not None and fds:
            self.loop.create_task(self._serve_tcp(fds[0], record.get("peer", "?"),
                                                  bytes.fromhex(record.get("first", ""))))
            self.idle_reported = False
        elif op == "channel" and self.server is not None and fds:
            from smbd.transport.proxy import serve_proxy_channel
            self.loop.create_task(serve_proxy_channel(self, fds[0], record))
            self.idle_reported = False
        elif op == "exit":
            if self.server is None or not self.server.connections:
                self.loop.create_task(self.shutdown())
        elif op == "shutdown":
            self.loop.create_task(self.shutdown())
        else:
            for fd in fds:
                os.close(fd)
            log.warning("unexpected control record %r", op)

    def _send_status(self, request_id) -> None:
        """What this worker serves, for `smbdd status` (smbd.server.status); lists cut short
        to fit one control record, and marked so."""
        from smbd.control import MAX_RECORD
        from smbd.server.status import snapshot

        snap = snapshot(self.server, os.getpid()) if self.server is not None else {"pid": os.getpid()}
        reply = {"op": "status", "id": request_id, "status": snap}
        while len(json.dumps(reply)) > MAX_RECORD - 1024:
            longest = max(("opens", "locks", "durable_waiting"), key=lambda k: len(snap.get(k, ())))
            snap[longest] = snap[longest][: len(snap[longest]) // 2]
            snap["truncated"] = True
        send_record(self.control, reply)

    async def _serve_tcp(self, fd: int, peer: str, first: bytes, paused: bool = False) -> SmbConnection:
        sock = socket.socket(fileno=fd)
        server = self.server
        holder: dict[str, SmbConnection] = {}

        def on_message(message: bytes) -> None:
            conn = holder["conn"]
            conn.receive(message)
            if len(conn.tasks) > MAX_IN_FLIGHT:
                transport.pause_reading()
                conn_task_watch(conn)

        def conn_task_watch(conn: SmbConnection) -> None:
            def resume(_t):
                if len(conn.tasks) <= MAX_IN_FLIGHT // 2:
                    transport.resume_reading()
            for t in list(conn.tasks):
                t.add_done_callback(resume)

        def on_lost() -> None:
            conn = holder.get("conn")
            if conn is not None:
                conn.close()
            self.check_idle()

        transport = TcpTransport(peer, server.config.max_io_size + 64 * 1024, on_message, on_lost,
                                 start_paused=paused)
        conn = SmbConnection(server, transport)
        holder["conn"] = conn
        server.connections.add(conn)
        await self.loop.connect_accepted_socket(lambda: transport, sock)
        log.info("%s: TCP connection", peer)
        if first:
            try:
                transport.feed_initial(first)
            except Exception:
                log.exception("%s: first message", peer)
                transport.close()
        return conn

    async def _open_moved_channel(self, kind: str, fd: int, peer: str, setup: dict | None) -> SmbConnection:
        """A channel another worker passed us (smbd.server.channel_move), not reading yet."""
        self.idle_reported = False
        if kind == "rdma":
            from smbd.transport.proxy import serve_proxy_channel
            return await serve_proxy_channel(self, fd, {"peer": peer}, setup, paused=True)
        return await self._serve_tcp(fd, peer, b"", paused=True)

    def check_idle(self) -> None:
        # Disconnected durable handles (smbd.server.durable) keep the worker: a reconnect of
        # the same ClientGUID must find them here. The table calls back when it empties.
        durable = self.server.durable if self.server is not None else None
        if durable is not None:
            durable.on_empty = self.check_idle
        if self.server is not None and not self.server.connections and not durable and not self.idle_reported:
            self.idle_reported = True
            try:
                send_record(self.control, {"op": "idle", "seen": self.seen})
            except OSError:
                pass

    async def shutdown(self) -> None:
        """Finish in-flight requests (bounded), then close every connection and exit.

        Runs once: SIGTERM and smbdd's "shutdown" record can both ask for it."""
        if self.stopping:
            return
        self.stopping = True
        server = self.server
        if server is not None:
            tasks = [t for c in list(server.connections) for t in c.tasks]
            if tasks:
                await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
            for conn in list(server.connections):
                conn.close()
            await asyncio.sleep(0)
            server.oplocks.stop()  # on the loop thread: it owns the signalfd reader
            await self.loop.run_in_executor(None, server.shutdown)
        self.done.set()


async def run(control_fd: int) -> None:
    control = socket.socket(fileno=control_fd)
    worker = Worker(control)
    loop = asyncio.get_running_loop()
    # smbdd handles SIGINT/SIGTERM for the whole group and tells workers what to do.
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(worker.shutdown()))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker.start()
    await worker.done.wait()


def _preload() -> None:
    """Import everything a request may need now, not in the middle of one: under the lab
    VM's emulation an import costs seconds, and clients time out waiting."""
    import shm.pool  # noqa: F401
    import smbd.server.handlers.ioctl  # noqa: F401
    import smbd.server.ipc  # noqa: F401
    import smbd.transport.proxy  # noqa: F401


def prepare_process() -> None:
    """What every worker process needs before anything else, done once in the zygote
    (smbd.zygote) and inherited by each fork: before any thread exists (the event loop's,
    the I/O pool's), block the kernel lease signals, which the oplock manager reads from a
    signalfd (smbd.server.oplocks); then load every module a request may need."""
    block_lease_signals()
    _preload()


def configure_logging(log_level: str, log_file: str | None) -> None:
    logsetup.configure(log_level, f"%(asctime)s worker[{os.getpid()}] %(name)s %(levelname)s: %(message)s", log_file)


def serve(control_fd: int) -> None:
    """Run the worker on its control socket until smbdd retires it or goes away."""
    profile_dir = os.environ.get("SMBDD_PROFILE_DIR")
    if not profile_dir:
        asyncio.run(run(control_fd))
        return
    # Developer aid: profile the event loop thread (where the protocol work runs) and leave
    # one pstats file per worker, read with `python -m pstats`.
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(asyncio.run, run(control_fd))
    finally:
        profiler.dump_stats(os.path.join(profile_dir, f"worker-{os.getpid()}.pstats"))


def main(argv: list[str] | None = None) -> None:
    """A worker started on its own (smbdd without a zygote): the same steps in one process."""
    parser = argparse.ArgumentParser(prog="smbd-worker")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file")
    args = parser.parse_args(argv)
    prepare_process()
    configure_logging(args.log_level, args.log_file)
    serve(args.control_fd)


if __name__ == "__main__":
    main()
