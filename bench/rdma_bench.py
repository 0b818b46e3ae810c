"""SMB Direct throughput and latency in the soft-RoCE lab: smbdd and ksmbd as ratios of raw verbs.

    python -m bench.rdma_bench [--size-mib 256] [--runs 1] [--no-ksmbd]

Boots the lab VM once (deploy/lab/vm-run.sh) and runs bench/rdma_lab_inner.sh there: raw
ib_write_bw/ib_read_bw/ib_send_lat, then smbdd over an RDMA mount and over TCP, then the kernel's
ksmbd (built with SMB Direct by deploy/lab/build-ksmbd.sh, its user-space half ksmbd-tools 3.5.2
fetched unpacked by deploy/lab/fetch-ksmbd-tools.sh) over RDMA and TCP: dd with direct I/O, fio at
queue depth 1 and 4, and 512-byte reads at QD1 for the per-message cost.  The issue's target is
0.9 of raw and at least ksmbd in every column; the table says where we are.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("dd_write", "dd_read", "fio_qd1_write", "fio_qd1_read", "fio_qd4_write", "fio_qd4_read")
SERVERS = ("smbdd", "ksmbd")


def parse(path: Path) -> dict[str, float | str]:
    """bench.txt: one "name value" line per measurement; non-numbers (n/a, failures) kept as text."""
    out: dict[str, float | str] = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    return out


def raw_ceiling(r: dict, col: str) -> float | None:
    """The raw verb doing the same work as the column's I/O: a client write is the server's RDMA
    read of the client's buffer (ib_read_bw), a client read the server's RDMA write."""
    v = r.get("raw_ib_read_bw" if col.endswith("write") else "raw_ib_write_bw")
    return v if isinstance(v, float) else None


def ratio(a: object, b: object) -> str:
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) and b else "-"


def cell(v: object) -> str:
    return f"{v:.1f}" if isinstance(v, float) else ("-" if v is None else str(v))


def us(v: object) -> str:  # also for counts: whole numbers
    return f"{v:.0f}" if isinstance(v, float) else ("-" if v is None else str(v))


def report(r: dict) -> str:
    rows = [f"raw verbs: ib_write_bw {cell(r.get('raw_ib_write_bw'))} MiB/s, "
            f"ib_read_bw {cell(r.get('raw_ib_read_bw'))} MiB/s, "
            f"ib_send_lat 64 B {cell(r.get('raw_send_lat_us'))} us (one way)",
            f"{us(r.get('size_mib'))} MiB per job; medians of {us(r.get('runs', 1.0))} interleaved "
            "round(s) of raw verbs, smbdd, ksmbd", ""]
    w = 11
    head = [c.replace("fio_", "") for c in COLUMNS]
    rows.append(f"{'MiB/s':<14}" + "".join(f"{h:>{w}}" for h in head))

    def line(label: str, values: list[str]) -> None:
        rows.append(f"{label:<14}" + "".join(f"{v:>{w}}" for v in values))

    line("raw verbs", [cell(raw_ceiling(r, c)) for c in COLUMNS])
    for s in SERVERS:
        line(f"{s} RDMA", [cell(r.get(f"{s}_rdma_{c}")) for c in COLUMNS])
    for s in SERVERS:
        line(f"{s}/raw", [ratio(r.get(f"{s}_rdma_{c}"), raw_ceiling(r, c)) for c in COLUMNS])
    line("smbdd/ksmbd", [ratio(r.get(f"smbdd_rdma_{c}"), r.get(f"ksmbd_rdma_{c}")) for c in COLUMNS])
    # What each MiB cost the whole VM in busy CPU (client, server, rxe at both ends): on a
    # 2-vCPU emulated machine that CPU is the budget both servers share, so the difference is
    # what the server's own code costs per MiB.
    for s in SERVERS:
        line(f"{s} CPU", [cell(r.get(f"{s}_rdma_{c}_cpu")) for c in COLUMNS])
    for s in SERVERS:
        line(f"{s} TCP", [cell(r.get(f"{s}_tcp_{c}")) for c in COLUMNS])
    rows.append("(raw verbs: the verb doing the work, ib_read_bw under writes, ib_write_bw under reads; "
                "CPU: the VM's busy CPU in ms per MiB over RDMA, everything in the VM counted; "
                "TCP is the same mount over the VM's loopback, not a ceiling)")

    # The per-message cost: 512 B reads travel inline in SMB Direct sends, so the round trip is one
    # SMB2 READ through the server's whole stack.  Against ksmbd (same client, same transport) the
    # difference is what smbdd adds per message; RDMA minus TCP on the same server is what that
    # server's RDMA path costs, and smbdd's minus ksmbd's is what the proxy hop adds to it.
    rows.append("")
    rows.append("512 B direct read at QD1, mean us per SMB2 READ round trip (inline, no RDMA read/write):")
    lat = {(s, t): r.get(f"{s}_{t}_lat512_us") for s in SERVERS for t in ("rdma", "tcp")}
    known = {k: v for k, v in lat.items() if isinstance(v, float)}
    for t in ("rdma", "tcp"):
        s_lat, k_lat = lat["smbdd", t], lat["ksmbd", t]
        added = (f"; smbdd adds {s_lat - k_lat:.0f} us per message over ksmbd (x{s_lat / k_lat:.1f})"
                 if ("smbdd", t) in known and ("ksmbd", t) in known and k_lat else "")
        rows.append(f"  {t.upper():<5} smbdd {us(s_lat)}, ksmbd {us(k_lat)}{added}")
    if len(known) == 4:
        s_hop = lat["smbdd", "rdma"] - lat["smbdd", "tcp"]
        k_hop = lat["ksmbd", "rdma"] - lat["ksmbd", "tcp"]
        # ksmbd's RDMA and TCP round trips can come out equal (its RDMA path costs nothing
        # measurable here); a negative difference is noise and counts as zero.
        if s_hop > 0:
            verdict = (f": the proxy hop adds about {s_hop - max(k_hop, 0.0):.0f} us per message "
                       "beyond soft-RoCE's own cost")
        else:
            verdict = " (smbdd's RDMA is not slower than its TCP here: no proxy cost to read)"
        rows.append(f"  RDMA minus TCP: smbdd {s_hop:.0f} us, ksmbd {k_hop:.0f} us{verdict}")
    rows.append(f"  raw ib_send_lat 64 B: {cell(r.get('raw_send_lat_us'))} us one way")

    notes = {k: v for k, v in r.items()
             if k.endswith("_status") or k in ("ksmbd_tools", "kernel_oopses", "share_fs")}
    if notes:
        rows.append("")
        rows.append("notes: " + ", ".join(f"{k}={us(v) if k == 'kernel_oopses' else cell(v)}"
                                         for k, v in notes.items()))
    return "\n".join(rows)


def fetch_ksmbd_tools(out: Path) -> Path | None:
    """ksmbd-tools 3.5.2 unpacked on the host, copied into the results folder: the VM hides the
    host's /var/cache, and the results folder is the one place both sides see."""
    proc = subprocess.run(["bash", str(REPO / "deploy/lab/fetch-ksmbd-tools.sh")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not proc.stdout.strip():
        print("ksmbd-tools unavailable: the ksmbd rows stay empty", file=sys.stderr)
        return None
    dest = out / "ksmbd-tools"
    shutil.copytree(proc.stdout.strip().splitlines()[-1], dest, symlinks=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=1, help="repeat every job N times, report medians")
    ap.add_argument("--no-ksmbd", action="store_true", help="measure raw verbs and smbdd only")
    args = ap.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="smbdd-rdma-bench."))
    # About 10 min per run on a loaded 2-core host (boot, two servers x RDMA and TCP).
    env = dict(os.environ, SMBDD_LAB_OUT=str(out), SMBDD_LAB_PYTHON=sys.executable,
               SMBDD_LAB_TIMEOUT=str(1200 + 900 * args.runs))
    inner_env = f"BENCH_SIZE_MIB={args.size_mib} BENCH_RUNS={args.runs}"
    tools = None if args.no_ksmbd else fetch_ksmbd_tools(out)
    if tools is not None:
        env["SMBDD_LAB_KSMBD"] = "1"   # vm-run.sh builds (or reuses) ksmbd.ko: LAB_KSMBD_KO
        inner_env += f" LAB_KSMBD_TOOLS={shlex.quote(str(tools))}"
    inner = f"{inner_env} bash {shlex.quote(str(REPO / 'bench/rdma_lab_inner.sh'))}"
    proc = subprocess.run([str(REPO / "deploy/lab/vm-run.sh"), inner], env=env, stdin=subprocess.DEVNULL)
    results = out / "bench.txt"
    if not results.exists():
        print(f"no results (vm-run exit {proc.returncode}); logs in {out}", file=sys.stderr)
        return 1
    print(report(parse(results)))
    print(f"\nraw output and logs: {out}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
