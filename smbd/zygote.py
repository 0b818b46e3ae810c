"""The process workers are forked from, as Samba's smbd forks a child per client from a
parent that has already loaded everything: a new worker costs a fork (milliseconds, pages
shared copy-on-write) instead of a fresh interpreter importing the server (about 0.2 s on
the host, seconds in the lab VM, and each worker's own copy of every module).

smbdd starts one zygote (smbdd.zygote_client). It imports the worker's modules, blocks the
kernel lease signals (smbd.server.oplocks; the mask is inherited), starts no thread, opens
no store and runs no event loop, so a fork of it is a clean start for a worker. Over its
control socket (SOCK_SEQPACKET, smbd.control records):

- smbdd -> zygote: ``{"op": "fork"}`` with one fd, the new worker's control socket;
- zygote -> smbdd: ``{"op": "forked", "pid"}`` (or ``{"op": "fork-failed", "error"}``), in
  the order of the requests, and ``{"op": "exited", "pid", "code"}`` when it has reaped a
  worker (code as subprocess's returncode: negative for a signal).

The zygote handles no client input; when smbdd's end closes it exits, and its workers go
on to notice smbdd is gone on their own control sockets, as exec'd workers do.
"""
from __future__ import annotations

import argparse
import gc
import os
import selectors
import signal
import socket
import sys

from smbd import worker
from smbd.control import recv_record, send_record


def _child(sel: selectors.BaseSelector, control: socket.socket, wakeup_r: int, wakeup_w: int, fd: int,
           log_level: str, log_file: str | None) -> None:
    """In the forked worker: drop the zygote's own signal plumbing and sockets, then run."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sel.close()
        for own in (control.detach(), wakeup_r, wakeup_w):
            os.close(own)
        worker.configure_logging(log_level, log_file)
        worker.serve(fd)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # a worker's crash is its own; never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        try:
            send_record(control, {"op": "exited", "pid": pid, "code": code})
        except OSError:
            return


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="smbd-zygote")
    ap.add_argument("--control-fd", type=int, required=True)
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--log-file")
    args = ap.parse_args(argv)
    worker.prepare_process()  # lease signals blocked, modules loaded: inherited by every fork
    # What is loaded now is every worker's, unchanged: out of the collector's sight, so that its
    # passes in a worker do not write to (and so copy) the pages all workers share.
    gc.freeze()
    control = socket.socket(fileno=args.control_fd)
    wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd tells the loop below
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sel = selectors.DefaultSelector()
    sel.register(control, selectors.EVENT_READ, "control")
    sel.register(wakeup_r, selectors.EVENT_READ, "signal")
    while True:
        for key, _ in sel.select():
            if key.data == "signal":
                try:
                    os.read(wakeup_r, 512)
                except BlockingIOError:
                    pass
                _reap(control)
                continue
            try:
                record, fds = recv_record(control)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                record, fds = None, []
            if record is None:
                sys.exit(0)  # smbdd is gone; its workers notice on their own sockets
            if record.get("op") != "fork" or len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                continue
            try:
                pid = os.fork()
            except OSError as e:
                os.close(fds[0])
                send_record(control, {"op": "fork-failed", "error": str(e)})
                continue
            if pid == 0:
                _child(sel, control, wakeup_r, wakeup_w, fds[0], args.log_level, args.log_file)
            os.close(fds[0])
            send_record(control, {"op": "forked", "pid": pid})


if __name__ == "__main__":
    main()
