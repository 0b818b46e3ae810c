"""What a process-to-process round trip, a system call and a clock read cost, beside plain
Python work: run it on the host and in the lab VM and compare the ratios.

    python3 -m bench.lab_costs host
    deploy/lab/vm-run.sh "python3 -m bench.lab_costs vm"     (SMBDD_LAB_NO_CIFS=1 skips cifs.ko)

The round trip is one byte each way over a Unix socketpair between two Python processes: two
send(2)s, two recv(2)s and two wake-ups, with the processes on any CPU, on the same one, or on
two different ones. It bounds what the proxy-to-worker hop itself costs, apart from the Python
work around each message.
"""
from __future__ import annotations

import os
import socket
import sys
import time


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def python_loop_ms() -> float:
    """A fixed piece of interpreter work: arithmetic and dict stores."""
    t0 = time.perf_counter()
    x, d = 0, {}
    for i in range(200_000):
        x += i * 3 % 7
        d[i & 255] = x
    return (time.perf_counter() - t0) * 1e3


def round_trip_us(n: int, cpus: tuple[int, int] | None) -> float:
    """Mean round trip of one byte to a forked echo process (pinned to ``cpus`` if given)."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            if cpus:
                os.sched_setaffinity(0, {cpus[1]})
            ours.close()
            while m := theirs.recv(1):
                theirs.send(m)
        finally:
            os._exit(0)
    theirs.close()
    everywhere = os.sched_getaffinity(0)
    try:
        if cpus:
            os.sched_setaffinity(0, {cpus[0]})
        for _ in range(50):  # warm up both sides
            ours.send(b"x")
            ours.recv(1)
        t0 = time.perf_counter()
        for _ in range(n):
            ours.send(b"x")
            ours.recv(1)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        ours.close()
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, everywhere)


def main() -> None:
    where = sys.argv[1] if len(sys.argv) > 1 else os.uname().nodename
    two = (0, 1) if os.cpu_count() and os.cpu_count() > 1 else (0, 0)
    for rnd in range(3):
        print(f"{where} round {rnd}: python loop {python_loop_ms():.1f} ms; "
              f"getppid {per_call_us(os.getppid, 20000):.2f} us; "
              f"time.monotonic {per_call_us(time.monotonic, 20000):.2f} us; "
              f"socketpair round trip: any CPU {round_trip_us(3000, None):.1f} us, "
              f"same CPU {round_trip_us(3000, (0, 0)):.1f} us, "
              f"CPU {two[0]} to {two[1]} {round_trip_us(3000, two):.1f} us", flush=True)


if __name__ == "__main__":
    main()
