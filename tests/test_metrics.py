"""Prometheus metrics (smbd.metrics): smbdd's endpoint adds up its workers' counts; checked
after smbclient traffic and a worker killed with -9."""
from __future__ import annotations

import os
import signal
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.peers.ports import free_tcp_port
from tests.smbdd_process import PASSWORD, SMBDD, USER, Smbdd, wait_until

pytestmark = pytest.mark.peer


def scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_bytes_sessions_and_crashes_add_up_over_workers(tmp_path):
    port = free_tcp_port()
    srv = Smbdd(tmp_path, "--metrics", f"127.0.0.1:{port}")
    try:
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(300_000))
        for name in ("a.bin", "b.bin"):  # two clients: two workers
            r = subprocess.run(["smbclient", "-s", "/dev/null", "//127.0.0.1/data", "-p", str(srv.port),
                                "-U", f"{USER}%{PASSWORD}", "-m", "SMB3_11", "-c", f"put {src} {name}; ls"],
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
        s = scrape(port)
        assert value(s, "smbdd_requests_total", command="CREATE") >= 4
        assert value(s, "smbdd_requests_total", command="WRITE") >= 2
        assert value(s, "smbdd_request_seconds_count", command="WRITE") == value(s, "smbdd_requests_total",
                                                                                 command="WRITE")
        assert value(s, "smbdd_bytes_total", transport="tcp", direction="in") > 2 * 300_000
        assert value(s, "smbdd_bytes_total", transport="tcp", direction="out") > 0
        assert value(s, "smbdd_worker_crashes_total") == 0
        # A worker that dies unasked is counted; its live gauges leave the sums.
        holder = subprocess.Popen(["smbclient", "-s", "/dev/null", "//127.0.0.1/data", "-p", str(srv.port),
                                   "-U", f"{USER}%{PASSWORD}", "-m", "SMB3_11"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        try:
            assert wait_until(lambda: value(scrape(port), "smbdd_sessions") >= 1, 15)
            pid = srv.worker_pids()[-1]
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: value(scrape(port), "smbdd_worker_crashes_total") == 1, 15)
            assert value(scrape(port), "smbdd_sessions") == 0
        finally:
            holder.kill()
            holder.wait()
    finally:
        srv.stop()


def test_bad_metrics_address_is_one_line(tmp_path):
    r = subprocess.run([*SMBDD, "--share", f"d={tmp_path}", "--user", "a:b", "--no-rdma", "--metrics", "nowhere"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "is not HOST:PORT" in r.stderr and len(r.stderr.strip().splitlines()) == 1
