"""Prometheus metrics of smbdd and its workers, served by smbdd in the text format on an
optional local port (``metrics = "127.0.0.1:9445"``).

Every process counts into prometheus_client's multiprocess files in the runtime folder
(PROMETHEUS_MULTIPROC_DIR, set by smbdd before it starts workers), and smbdd's HTTP
endpoint adds them up, the way prometheus_client serves a pre-forked server. Without the
option nothing is imported and each hook below is one test of a module global.

- smbdd_requests_total{command}, smbdd_request_seconds{command}: SMB2 requests and their
  latency from arrival to the response being handed to the transport;
- smbdd_bytes_total{transport, direction}: SMB2 messages over TCP and SMB Direct (inline);
- smbdd_rdma_bytes_total{op}: payload moved by RDMA read (client writes) and write (reads);
- smbdd_sessions, smbdd_open_files: now, over all live workers;
- smbdd_worker_crashes_total: workers that died without being asked to.
"""
from __future__ import annotations

import os
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
_on = bool(os.environ.get(ENV))
_m: dict[str, Any] = {}

# Latencies of file-server requests: 50 µs (ECHO on the loop) up to 30 s (a CREATE waiting
# for an oplock break to be acknowledged).
_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
            5, 10, 30)


def _metrics() -> dict[str, Any]:
    if not _m:
        from prometheus_client import Counter, Gauge, Histogram

        _m["requests"] = Counter("smbdd_requests", "SMB2 requests handled", ["command"])
        _m["latency"] = Histogram("smbdd_request_seconds", "SMB2 request latency", ["command"], buckets=_BUCKETS)
        _m["bytes"] = Counter("smbdd_bytes", "SMB2 message bytes", ["transport", "direction"])
        _m["rdma"] = Counter("smbdd_rdma_bytes", "bytes moved by RDMA read/write", ["op"])
        _m["sessions"] = Gauge("smbdd_sessions", "sessions (set up or being set up)", multiprocess_mode="livesum")
        _m["opens"] = Gauge("smbdd_open_files", "open files and directories", multiprocess_mode="livesum")
        _m["crashes"] = Counter("smbdd_worker_crashes", "workers that died unasked")
    return _m


def enabled() -> bool:
    return _on


def request_done(command: str, seconds: float) -> None:
    if _on:
        m = _metrics()
        m["requests"].labels(command).inc()
        m["latency"].labels(command).observe(seconds)


def bytes_moved(transport: str, direction: str, n: int) -> None:
    if _on:
        _metrics()["bytes"].labels(transport, direction).inc(n)


def rdma_moved(op: str, n: int) -> None:
    if _on:
        _metrics()["rdma"].labels(op).inc(n)


def sessions_now(n: int) -> None:
    """This worker's count: set, not added to, so no path can leave it unbalanced."""
    if _on:
        _metrics()["sessions"].set(n)


def opens_now(n: int) -> None:
    if _on:
        _metrics()["opens"].set(n)


def worker_crashed(pid: int) -> None:
    if _on:
        _metrics()["crashes"].inc()


def worker_gone(pid: int) -> None:
    """Its live gauges stop counting (prometheus_client's files of a dead process)."""
    if _on:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def enable(folder: str) -> None:
    """smbdd, before any worker starts: count into ``folder`` from now on, in every process."""
    global _on
    os.makedirs(folder, exist_ok=True)
    os.environ[ENV] = folder
    _on = True


def serve(address: str, port: int) -> None:
    """The HTTP endpoint (a thread of smbdd) adding up every process's metrics."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(port, addr=address, registry=registry)
