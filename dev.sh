#!/usr/bin/env bash
# The project's entry points on a fresh Debian 12 machine (run as root: it installs packages).
#
#   ./dev.sh serve [smbdd options]   install what is needed, then run smbdd (no options: the lab
#                                    default, a share of a directory it creates and a user with a
#                                    generated password, printed with how to connect)
#   ./dev.sh test [pytest args]      install what is needed, run every test: unit tests, real
#                                    peers on loopback (smbclient, smbprotocol, impacket), and the
#                                    RDMA tests in the soft-RoCE lab VM (shared/LAB.md)
#   ./dev.sh torture                 the long smbtorture comparison against Samba's smbd, writing
#                                    tests/torture/RESULTS.md (its own command: it takes minutes)
#   ./dev.sh bench [args]            smbclient put/get of 256 MiB, smbdd against Samba's smbd
#   ./dev.sh bench-rdma [args]       SMB Direct in the lab VM against raw verbs (one boot)
#   ./dev.sh fresh-root [args]       the fresh-machine check: a clean Debian 12 root (debootstrap)
#                                    runs `./dev.sh serve` and `./dev.sh test` (deploy/fresh-root.sh)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo"
export SMBDD_VENV=${SMBDD_VENV:-/opt/smbdd/venv}
cmd=${1:-help}
shift || true

install() { bash deploy/install-deps.sh; }

case "$cmd" in
  serve)
    install >&2
    exec "$SMBDD_VENV/bin/smbdd" "$@"
    ;;
  test)
    install
    # The cifs.ko with SMB Direct is built once from Debian's kernel source and cached.
    bash deploy/lab/build-cifs.sh
    # The lab VM sees this tree read-only and runs Python 10-20x slower: compile the bytecode
    # here once, or every process in the VM compiles every module again.
    "$SMBDD_VENV/bin/python" -m compileall -q smbd smbdd shm tests bench >/dev/null
    exec "$SMBDD_VENV/bin/python" -m pytest -ra -m "not slow" "$@"
    ;;
  torture)
    install
    exec "$SMBDD_VENV/bin/python" -m tests.torture.compare --out tests/torture/RESULTS.md \
      --json tests/torture/results.json --passing-list tests/torture/smbdd_passing.txt "$@"
    ;;
  bench)
    install
    exec "$SMBDD_VENV/bin/python" -m bench.smbclient_bench "$@"
    ;;
  bench-rdma)
    install
    bash deploy/lab/build-cifs.sh >/dev/null
    exec "$SMBDD_VENV/bin/python" -m bench.rdma_bench "$@"
    ;;
  fresh-root)
    exec bash deploy/fresh-root.sh "$@"
    ;;
  *)
    sed -n '2,/^set -euo/{/^set -euo/!p}' "$0"
    exit 2
    ;;
esac
