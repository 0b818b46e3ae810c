"""bench/rdma_bench.py's table and deploy/lab/fetch-ksmbd-tools.sh (host side of bench-rdma)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench.rdma_bench import parse, report

REPO = Path(__file__).resolve().parents[1]


def table_row(text: str, label: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(label + " ") and line[:14].strip() == label:
            return line[14:].split()
    raise AssertionError(f"no row {label!r} in\n{text}")


def test_ratios_use_the_verb_doing_the_work_and_compare_with_ksmbd(tmp_path):
    lines = {
        "raw_ib_write_bw": 50.0, "raw_ib_read_bw": 40.0, "raw_send_lat_us": 20.0,
        "runs": 3.0, "size_mib": 256.0,
        "smbdd_rdma_dd_write": 20.0, "ksmbd_rdma_dd_write": 25.0,
        "smbdd_rdma_dd_read": 45.0, "ksmbd_rdma_dd_read": 30.0,
        "smbdd_rdma_lat512_us": 900.0, "ksmbd_rdma_lat512_us": 300.0,
        "smbdd_tcp_lat512_us": 500.0, "ksmbd_tcp_lat512_us": 200.0,
        "smbdd_tcp_dd_write": 70.0,
        "smbdd_rdma_dd_write_cpu": 60.5, "ksmbd_rdma_dd_write_cpu": 48.0,
    }
    f = tmp_path / "bench.txt"
    f.write_text("".join(f"{k} {v}\n" for k, v in lines.items()) + "ksmbd_status start-failed\n")
    text = report(parse(f))
    # A client write is the server's RDMA read (ib_read_bw 40), a read its RDMA write (ib_write_bw 50).
    assert table_row(text, "raw verbs") == ["40.0", "50.0"] * 3
    assert table_row(text, "smbdd/raw")[:2] == ["0.50", "0.90"]
    assert table_row(text, "ksmbd/raw")[:2] == ["0.62", "0.60"]
    assert table_row(text, "smbdd/ksmbd")[:2] == ["0.80", "1.50"]
    assert table_row(text, "smbdd/ksmbd")[2:] == ["-"] * 4     # columns not measured stay empty
    assert table_row(text, "smbdd TCP")[0] == "70.0"
    assert table_row(text, "smbdd CPU") == ["60.5"] + ["-"] * 5
    assert table_row(text, "ksmbd CPU") == ["48.0"] + ["-"] * 5
    assert "smbdd adds 600 us per message over ksmbd (x3.0)" in text
    # RDMA minus TCP: smbdd 400, ksmbd 100, so the proxy hop costs 300 beyond the transport's own.
    assert "RDMA minus TCP: smbdd 400 us, ksmbd 100 us: the proxy hop adds about 300 us" in text
    assert "ksmbd_status=start-failed" in text
    assert "256 MiB per job; medians of 3 interleaved round(s)" in text


def test_missing_ksmbd_leaves_dashes_not_errors(tmp_path):
    f = tmp_path / "bench.txt"
    f.write_text("raw_ib_write_bw 50.0\nraw_ib_read_bw 40.0\nsmbdd_rdma_dd_read 45.0\n"
                 "smbdd_rdma_dd_write failed\nksmbd_status not-run\n")
    text = report(parse(f))
    assert table_row(text, "ksmbd RDMA") == ["-"] * 6
    assert table_row(text, "smbdd RDMA")[0] == "failed"
    assert table_row(text, "smbdd/raw")[0] == "-"
    assert "RDMA minus TCP" not in text
    assert table_row(text, "smbdd/raw")[1] == "0.90"
    assert "adds" not in text


@pytest.mark.slow
def test_fetch_ksmbd_tools_gives_runnable_352():
    """Downloads from bookworm-backports on a cold cache (reuses it afterwards)."""
    if not shutil.which("apt-get"):
        pytest.skip("not a Debian machine")
    proc = subprocess.run(["bash", str(REPO / "deploy/lab/fetch-ksmbd-tools.sh")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    tools = Path(proc.stdout.strip().splitlines()[-1])
    version = subprocess.run([str(tools / "usr/sbin/ksmbd.mountd"), "-V"], capture_output=True, text=True)
    assert "3.5.2" in version.stdout + version.stderr
    # Unpacked, not installed: the samba the test suite needs is still there.
    assert subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "ksmbd-tools"],
                          capture_output=True, text=True).stdout != "installed"


def test_ksmbd_rdma_no_slower_than_tcp_counts_as_zero(tmp_path):
    f = tmp_path / "bench.txt"
    f.write_text("smbdd_rdma_lat512_us 8500\nsmbdd_tcp_lat512_us 4500\n"
                 "ksmbd_rdma_lat512_us 560\nksmbd_tcp_lat512_us 590\n")
    assert "the proxy hop adds about 4000 us per message" in report(parse(f))
