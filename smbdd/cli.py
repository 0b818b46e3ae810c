"""The `smbdd` command: parse settings, bind, start the acceptor (and the RDMA proxy), run."""
from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from smbd import logsetup, metrics

from .acceptor import Acceptor
from .config import ConfigError, Settings, build
from .state import StateError, make_runtime_dir, stable_server_guid
from .status import StatusService
from .supervisor import Supervisor

log = logging.getLogger("smbdd")
SHUTDOWN_GRACE = 15.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smbdd", description="SMB3 file server with an SMB Direct (RDMA) proxy.",
                                epilog="smbdd user {add,passwd,del,list}: the password database; "
                                       "smbdd check-config FILE: check a configuration; "
                                       "smbdd status [--json]: who is connected and what they hold")
    p.add_argument("--share", action="append", metavar="NAME=PATH", help="share a directory (repeatable)")
    p.add_argument("--user", action="append", metavar="NAME:PASSWORD", help="add a user (repeatable)")
    p.add_argument("--users", metavar="FILE", help="the password database (`smbdd user`); re-read when it changes")
    p.add_argument("--keytab", metavar="FILE",
                   help="offer Kerberos (SPNEGO) with the service keys of this keytab, beside NTLM")
    p.add_argument("--listen", action="append", metavar="ADDR", help="address to listen on (repeatable)")
    p.add_argument("--port", type=int, help="TCP port (default 445)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--encrypt", choices=["off", "auto", "desired", "required"],
                   help="encryption policy (default auto: offered, used when the client asks)")
    p.add_argument("--signing", choices=["auto", "required"], help="require signing on every session")
    p.add_argument("--device", action="append", metavar="DEV", help="RDMA device for SMB Direct (repeatable)")
    p.add_argument("--no-rdma", action="store_true", help="serve TCP only, even if RDMA devices exist")
    p.add_argument("--rdma-listen", action="append", metavar="ADDR",
                   help="address for SMB Direct (default: the devices' addresses)")
    p.add_argument("--spare-workers", type=int, default=1, metavar="N",
                   help="worker processes kept started ahead of new clients (default 1)")
    p.add_argument("--state-dir", help="where the lab default keeps its share and password")
    p.add_argument("--smbtorture-fsctl", action="store_true",
                   help="test only: simulated failures: answer smbtorture's FSCTL_SMBTORTURE_* codes, "
                        "and on SIGUSR2 cut the newest SMB Direct connection")
    p.add_argument("--unix-identity", choices=["users", "daemon"],
                   help="users (default): each user's file operations run as their Unix account; "
                        "daemon: all as smbdd's own account")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (off by default; e.g. 127.0.0.1:9445)")
    p.add_argument("--log-file", metavar="FILE",
                   help="log there instead of stderr (reopened after logrotate moves it)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


async def serve(settings: Settings, args) -> int:
    loop = asyncio.get_running_loop()
    supervisor = Supervisor(settings.server, args.log_level, spares=max(0, args.spare_workers),
                            log_file=args.log_file)
    acceptor = Acceptor(supervisor)
    try:
        acceptor.listen(settings.listen, settings.port)
    except OSError as e:
        reason = {errno.EADDRINUSE: "is already in use", errno.EACCES: "needs root (or CAP_NET_BIND_SERVICE)",
                  errno.EADDRNOTAVAIL: "is not an address of this machine"}.get(e.errno, e.strerror)
        print(f"smbdd: cannot listen on port {settings.port} of {', '.join(settings.listen)}: {reason}",
              file=sys.stderr)
        return 1
    if settings.metrics is not None:
        # Before any worker starts: they inherit where to count (smbd.metrics).
        metrics.enable(str(Path(settings.server.runtime_dir) / "metrics"))
        try:
            metrics.serve(*settings.metrics)
        except OSError as e:
            print(f"smbdd: cannot serve metrics on {settings.metrics[0]}:{settings.metrics[1]}: {e.strerror}",
                  file=sys.stderr)
            return 1
        print(f"smbdd: metrics on http://{settings.metrics[0]}:{settings.metrics[1]}/metrics", flush=True)
    proxy = None
    if settings.devices != []:
        from .rdma_start import start_rdma
        proxy = await start_rdma(settings, supervisor, args)
    await supervisor.start()
    status = StatusService(settings.server.runtime_dir, supervisor, proxy)
    await status.start()
    acceptor.start()
    if settings.server.unix_identity == "users" and os.geteuid() != 0:
        print(f"smbdd: not root: every user's file operations run as this account (uid {os.geteuid()})",
              flush=True)
    for line in settings.banner:
        print(f"smbdd: {line}", flush=True)
    ports = ", ".join(f"{a}:{settings.port}" for a in settings.listen)
    shares = ", ".join(s.name for s in settings.server.shares)
    print(f"smbdd: serving {shares} over TCP on {ports}", flush=True)
    if settings.banner:
        user = settings.server.users[0].name
        host = "127.0.0.1" if settings.listen == ["0.0.0.0"] else settings.listen[0]
        port_opt = "" if settings.port == 445 else f" -p {settings.port}"
        print(f"smbdd: connect with: smbclient //{host}/share{port_opt} -U {user}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if proxy is not None and settings.server.smbtorture_fsctl:
        loop.add_signal_handler(signal.SIGUSR2, proxy.cut_newest_connection)
    loop.add_signal_handler(signal.SIGHUP, reload, settings, args, supervisor)
    await stop.wait()
    log.info("shutting down: no new connections, finishing in-flight requests")
    acceptor.close()
    await status.close()
    if proxy is not None:
        await proxy.stop_listening()
    await supervisor.shutdown(SHUTDOWN_GRACE)
    if proxy is not None:
        await proxy.close()
    log.info("stopped")
    return 0


def reload(settings: Settings, args, supervisor: Supervisor) -> None:
    """SIGHUP: the configuration file and command line read again; shares, users and
    access lists change for new logons and tree connects, connected clients stay. A file
    with mistakes changes nothing. Addresses, ports, devices and the state directory are
    bound at the start and stay until a restart."""
    try:
        fresh = build(args)
    except ConfigError as e:
        log.error("reload refused, the configuration stays as it was:\n%s", e)
        return
    fixed = ("listen", "port", "devices", "rdma_port", "state_dir")
    changed = [k for k in fixed if getattr(fresh, k) != getattr(settings, k)]
    if changed:
        log.warning("reload: %s change only at the next start", ", ".join(changed))
    current = supervisor.config
    # What the running server fixed at the start: its identity, its stores, its RDMA.
    supervisor.reconfigure(replace(fresh.server, server_guid=current.server_guid, runtime_dir=current.runtime_dir,
                                   state_dir=current.state_dir, rdma_interfaces=current.rdma_interfaces,
                                   max_io_size=current.max_io_size))
    log.info("reloaded: %d share(s), %d user(s) in the configuration%s", len(fresh.server.shares),
             len(fresh.server.users), f", users file {fresh.server.users_file}" if fresh.server.users_file else "")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["user"]:
        from .users_cli import main as user_main

        sys.exit(user_main(argv[1:]))
    if argv[:1] == ["status"]:
        from .status import main as status_main

        sys.exit(status_main(argv[1:]))
    if argv[:1] == ["check-config"]:
        from .check_config_cli import main as check_main

        sys.exit(check_main(argv[1:]))
    args = parser().parse_args(argv)
    try:
        logsetup.configure(args.log_level, "%(asctime)s smbdd %(name)s %(levelname)s: %(message)s", args.log_file)
    except OSError as e:
        print(f"smbdd: cannot log to {args.log_file}: {e.strerror}", file=sys.stderr)
        sys.exit(2)
    try:
        settings = build(args)
        settings.server = replace(settings.server, server_guid=stable_server_guid(settings.state_dir),
                                  runtime_dir=str(make_runtime_dir()), state_dir=str(settings.state_dir))
    except (ConfigError, StateError) as e:
        print(f"smbdd: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(serve(settings, args)))


if __name__ == "__main__":
    main()
