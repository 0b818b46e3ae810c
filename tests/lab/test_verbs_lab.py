"""smbdd.rdma.verbs over a real rdma_cm connection on rxe0 (soft-RoCE) inside the lab VM.

The server side is our asyncio-driven layer (aio_server.py); the peer is rdma_client.py, plain
pyverbs in another process.  Numbers land in $LAB_OUT/lab-results.json.
"""
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import pytest

from smbdd.rdma import verbs

from aio_server import AioServer, EchoHandler, ExchangeHandler, InvalidateHandler, ShmPool

CLIENT = str(Path(__file__).with_name("rdma_client.py"))
HOST = "10.77.0.1"
PYTHON = os.environ.get("LAB_PYTHON", sys.executable)


async def start_client(*args):
    return await asyncio.create_subprocess_exec(
        PYTHON, CLIENT, *map(str, args), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)


async def run_client(*args, timeout=120):
    proc = await start_client(*args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, f"client {args} failed: {err.decode()[-2000:]}"
    return json.loads(out.decode().strip().splitlines()[-1])


class Ticker:
    """Counts event-loop wakeups: proof that nothing in the layer blocks the loop."""

    def __init__(self):
        self.ticks, self.max_gap = 0, 0.0

    async def run(self):
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.ticks += 1
            self.max_gap = max(self.max_gap, now - last)
            last = now


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_discovery_sees_rxe0():
    assert "rxe0" in verbs.list_devices()
    info = verbs.describe_device("rxe0")
    assert info.transport == "roce"
    assert info.smbd_port == 445
    assert "veth0" in info.netdevs
    assert HOST in info.addresses


def test_echo_pingpong_and_disconnect(lab_results, tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        pool = ShmPool("smbdd-lab-echo", 4096, 64)
        srv = AioServer(loop, pool, EchoHandler())
        srv.start()
        ticker = Ticker()
        tick_task = asyncio.create_task(ticker.run())
        try:
            res = await run_client("pingpong", HOST, srv.port, 1000, 64)
            conn = srv.conns[0]
            # The client closed its id: we must see DISCONNECTED and the posted receives flush.
            await asyncio.wait_for(conn.closed.wait(), 30)
            flushed = [c for c in conn.completions if c.status == verbs.WC_WR_FLUSH_ERR]
            ok = [c for c in conn.completions if c.status == verbs.WC_SUCCESS]
            stats = {"max_callback_ms": {k: v * 1e3 for k, v in srv.max_callback_s.items()},
                     "cq_callback_mean_us": srv.cq_callback_total_s / max(srv.cq_callbacks, 1) * 1e6}
            return res, conn, flushed, ok, ticker, stats
        finally:
            tick_task.cancel()
            srv.close()
            pool.close()

    res, conn, flushed, ok, ticker, stats = asyncio.run(main())
    assert res["count"] == 1000
    assert verbs.CmEvent.ESTABLISHED in conn.cm_events
    assert verbs.CmEvent.DISCONNECTED in conn.cm_events
    assert len(flushed) == 8, "every posted receive must come back flushed after disconnect"
    assert sum(c.opcode == verbs.WcOpcode.RECV for c in ok) == 1000
    assert sum(c.opcode == verbs.WcOpcode.SEND for c in ok) == 1000
    assert conn.ep.state is verbs.EndpointState.CLOSED
    assert ticker.ticks > 50, "event loop starved while RDMA traffic ran"
    lab_results["echo_64B"] = {**res, **stats, "loop_ticks": ticker.ticks,
                               "loop_max_gap_ms": ticker.max_gap * 1e3}


def test_rdma_read_write_into_shm(lab_results):
    length = 1 << 20

    async def main():
        loop = asyncio.get_running_loop()
        pool = ShmPool("smbdd-lab-rdma", length, 16)
        srv = AioServer(loop, pool, ExchangeHandler(), recv_slots=4, spare_slots=4)
        srv.start()
        try:
            res = await run_client("rdma", HOST, srv.port, length)
            conn = srv.conns[0]
            for _ in range(200):
                if conn.state.get("done"):
                    break
                await asyncio.sleep(0.05)
            return res, dict(conn.state)
        finally:
            srv.close()
            pool.close()

    res, st = asyncio.run(main())
    assert not st.get("errors"), st.get("errors")
    assert st["read_ok"], "RDMA read of the client's buffer did not land intact in the shm slot"
    assert res["server_write_landed"], "RDMA write into the client's buffer did not land intact"
    assert st["client_write_ok"], "client's RDMA write into our shm slot did not land intact"
    lab_results["rdma_1MiB"] = {"server_read_ms": st["read_s"] * 1e3, "server_write_ms": st["write_s"] * 1e3,
                                "client_write_ms": res["client_write_s"] * 1e3}


def test_send_with_invalidate_revokes_the_peer_window():
    length = 64 * 1024

    async def main():
        loop = asyncio.get_running_loop()
        pool = ShmPool("smbdd-lab-inv", length, 16)
        srv = AioServer(loop, pool, InvalidateHandler(), recv_slots=4, spare_slots=2)
        srv.start()
        try:
            res = await run_client("inv", HOST, srv.port, length)
            conn = srv.conns[0]
            await asyncio.wait_for(conn.closed.wait(), 30)
            return res, dict(conn.state)
        finally:
            srv.close()
            pool.close()

    res, st = asyncio.run(main())
    assert res["tag"] == "INVD"
    assert res["data_landed"], "RDMA write through the memory window did not land"
    assert res["with_inv"], f"the client's receive completion does not carry IBV_WC_WITH_INV: {res} {st}"
    assert res["invalidated_rkey_matches"]
    # After the invalidation the window is dead: our second write must fail remotely.
    assert not st.get("second_write_succeeded")
    assert res["buffer_untouched_after_inv"]
    assert any(c.wr_id == 2003 and c.status == 10 for c in st.get("errors", [])), st.get("errors")
    # Our side answered the client's DREQ: its synchronous rdma_disconnect did not time out.
    assert res["disconnect_s"] < 10


def test_silent_client_does_not_stall_another(lab_results):
    async def main():
        loop = asyncio.get_running_loop()
        pool = ShmPool("smbdd-lab-silent", 4096, 64)
        srv = AioServer(loop, pool, EchoHandler())
        srv.start()
        ticker = Ticker()
        tick_task = asyncio.create_task(ticker.run())
        try:
            alone = await run_client("pingpong", HOST, srv.port, 300, 64)
            silent = await start_client("silent", HOST, srv.port, 120)
            quiet_conn = await asyncio.wait_for(srv.new_conn.get(), 60)
            quiet_conn = await asyncio.wait_for(srv.new_conn.get(), 60)
            await asyncio.wait_for(quiet_conn.established.wait(), 30)
            t0 = time.perf_counter()
            busy = await run_client("pingpong", HOST, srv.port, 300, 64)
            busy_wall = time.perf_counter() - t0
            silent_state = quiet_conn.ep.state
            max_cb = {k: v * 1e3 for k, v in srv.max_callback_s.items()}
            silent.kill()
            await silent.wait()
            return alone, busy, busy_wall, silent_state, ticker, max_cb
        finally:
            tick_task.cancel()
            srv.close()
            pool.close()

    alone, busy, busy_wall, silent_state, ticker, max_cb = asyncio.run(main())
    assert silent_state is verbs.EndpointState.ESTABLISHED
    # A layer that waited on the silent connection would hang the busy client until its timeout;
    # it finished, and no callback held the loop long.  (RTT ratios are only recorded: on a
    # loaded 2-core host the TCG VM's latencies vary 10x run to run.)
    assert busy["count"] == 300
    assert max(max_cb.values()) < 2000, max_cb
    assert ticker.max_gap < 5, ticker.max_gap
    lab_results["silent_client"] = {"alone_rtt_median_us": alone["rtt_median_us"],
                                    "with_silent_rtt_median_us": busy["rtt_median_us"],
                                    "with_silent_wall_s": busy_wall, "max_callback_ms": max_cb,
                                    "loop_max_gap_ms": ticker.max_gap * 1e3}


def test_no_descriptor_leak_per_connection():
    async def one_round(srv):
        await run_client("pingpong", HOST, srv.port, 10, 64)
        conn = srv.conns[-1]
        await asyncio.wait_for(conn.closed.wait(), 30)
        srv.close_conn(conn)

    async def main():
        loop = asyncio.get_running_loop()
        pool = ShmPool("smbdd-lab-leak", 4096, 64)
        srv = AioServer(loop, pool, EchoHandler())
        srv.start()
        try:
            await one_round(srv)        # first round opens the device context for good
            before = fd_count()
            for _ in range(3):
                await one_round(srv)
            return before, fd_count()
        finally:
            srv.close()
            pool.close()

    before, after = asyncio.run(main())
    assert after == before, f"descriptors leaked: {before} -> {after}"
