"""Where a worker runs a WRITE's pwrite (ServerState.write_from): on the event loop when it
is the worker's only request, on a helper thread when other requests wait for the loop or
the write must reach the disk (write-through)."""
import asyncio
import threading

from smbd.server.config import ServerConfig
from smbd.server.state import ServerState


class RecordingVfs:
    def __init__(self):
        self.threads: list[str] = []

    def pwrite(self, fd, data, offset):
        self.threads.append(threading.current_thread().name)
        return len(data)


class BusyConnection:
    """Stands in for an SmbConnection: only its running request tasks matter here."""

    def __init__(self, tasks: int):
        self.tasks = set(range(tasks))


def _write(tmp_path, connections, write_through=False):
    async def run():
        server = ServerState(ServerConfig(shares=(), users=(), io_threads=1))
        server.connections.update(connections)
        vfs = RecordingVfs()
        with open(tmp_path / "f", "wb") as f:
            n = await server.write_from(vfs, f.fileno(), memoryview(b"x" * 10), 0, write_through)
        server.io_pool.shutdown(wait=True)
        return n, vfs.threads, threading.current_thread().name
    return asyncio.run(run())


def test_the_only_request_writes_on_the_loop(tmp_path):
    n, threads, loop_thread = _write(tmp_path, [BusyConnection(1)])
    assert n == 10 and threads == [loop_thread]


def test_other_requests_in_flight_send_the_write_to_a_helper_thread(tmp_path):
    # Two channels of one client, one request each: the loop has other work.
    n, threads, loop_thread = _write(tmp_path, [BusyConnection(1), BusyConnection(1)])
    assert n == 10 and len(threads) == 1 and threads[0].startswith("smbd-io")


def test_write_through_always_goes_to_a_helper_thread(tmp_path):
    n, threads, _ = _write(tmp_path, [BusyConnection(1)], write_through=True)
    assert n == 10 and threads[0].startswith("smbd-io")
