#!/usr/bin/env bash
# The fresh-machine check: a clean Debian 12 root made with debootstrap, this checkout cloned into
# it, and the README's two commands run there as a new user would run them, with nothing of this
# machine's packages, venvs or caches: first `./dev.sh serve` (the lab default; smbclient, which
# that command's own install step brought, puts a file and lists the share), then `./dev.sh test`.
# It prints how long each step took.  Takes about half an hour; not part of `./dev.sh test`.
#
# Usage (root): deploy/fresh-root.sh [--keep] [--committed] [--root DIR] [--no-test] [-- PYTEST_ARGS]
#   --keep       leave the root in place afterwards (default: deleted when the run ends)
#   --committed  check HEAD only (default: HEAD plus the working tree's uncommitted changes)
#   --root DIR   where to build the root (default: a new /var/tmp/smbdd-fresh.XXXXXX)
#   --no-test    stop after the serve check
# Environment: SMBDD_FRESH_MIRROR (default http://deb.debian.org/debian),
#   SMBDD_FRESH_SECURITY (default http://deb.debian.org/debian-security),
#   SMBDD_FRESH_TIMEOUT (seconds for the commands inside the root, default 5400).
#
# The root is minbase (only Debian's "required" packages: no python3, gcc, ps, ...), stricter
# than any real fresh install, so every package the project needs must come from its own scripts.
# Its sources are those of a Debian 12 installation: bookworm, bookworm-updates, bookworm-security.
# The commands run in their own mount and PID namespaces: the bind mounts (/dev, /sys) and every
# process started inside (smbdd, the lab VM) end with the run.  The network is this machine's:
# apt and pip reach their registries, and smbdd listens on 127.0.0.1 on a free port, never 445.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[fresh-root %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

keep=0 committed=0 root= run_tests=1 pytest_args=()
while (($#)); do
    case $1 in
        --keep) keep=1 ;;
        --committed) committed=1 ;;
        --root) root=${2:?--root needs a directory}; shift ;;
        --no-test) run_tests=0 ;;
        --) shift; pytest_args=("$@"); break ;;
        *) die "unknown option $1 (see the top of $0)" ;;
    esac
    shift
done
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, mounts)"
mirror=${SMBDD_FRESH_MIRROR:-http://deb.debian.org/debian}
security=${SMBDD_FRESH_SECURITY:-http://deb.debian.org/debian-security}

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap on this machine"
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends debootstrap >/dev/null \
        || die "apt-get install debootstrap failed"
fi

[[ -n $root ]] || root=$(mktemp -d /var/tmp/smbdd-fresh.XXXXXX)
mkdir -p "$root"
root=$(cd "$root" && pwd)
[[ $root != / ]] || die "--root must not be /"
chmod 755 "$root"   # it becomes /: mktemp's 0700 would hide everything from non-root users
logs=$root.logs
mkdir -p "$logs"

# Never delete through a mount: the namespace's bind mounts of /dev and /sys die with it, but if
# anything is still mounted under the root, leave the root for a person to look at.
cleanup() {
    if [[ $keep == 1 ]]; then
        log "kept the root: $root"
    elif findmnt -rn -o TARGET | grep -q "^$root/"; then
        log "something is still mounted under $root: not deleting it"
    else
        rm -rf --one-file-system "$root"
    fi
    log "logs: $logs"
}
trap cleanup EXIT

seconds() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}'; }
t=$(date +%s.%N)
log "debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$logs/debootstrap.log" 2>&1 \
    || { tail -20 "$logs/debootstrap.log" >&2; die "debootstrap failed (log: $logs/debootstrap.log)"; }
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# How this machine reaches the registries belongs to the machine, not to the project: a fresh
# machine of this kind has it before anything is installed (here an egress CA that re-signs
# HTTPS, /etc/pip.conf naming the CA bundle, and proxy/CA variables).  The root gets the same, so
# that pip can verify PyPI; the CA files go where the ca-certificates package will pick them up.
if [[ -d /usr/local/share/ca-certificates ]]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$root/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
fi
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$root/etc/pip.conf"
machine_env=()
while IFS= read -r -d '' kv; do
    case ${kv%%=*} in
        http_proxy|https_proxy|no_proxy|HTTP_PROXY|HTTPS_PROXY|NO_PROXY|SSL_CERT_FILE|SSL_CERT_DIR|\
        REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|PIP_CERT|PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|PIP_TRUSTED_HOST|\
        PIP_DEFAULT_TIMEOUT) machine_env+=("$kv") ;;
    esac
done < <(env -0)
debootstrap_s=$(seconds "$t")
log "debootstrap: $debootstrap_s s"

# A clean clone of this checkout, plus (unless --committed) what the working tree changed.
git clone -q --no-hardlinks "$repo" "$root/root/smbdd"
if [[ $committed == 0 ]]; then
    (cd "$repo" && git ls-files -z --modified --others --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$root/root/smbdd"
    (cd "$repo" && git ls-files -z --deleted) | (cd "$root/root/smbdd" && xargs -0 -r rm -f --)
fi
log "checkout: $(git -C "$repo" rev-parse --short HEAD)$([[ $committed == 1 ]] || echo ' + working tree')"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# What runs inside the root, as a new user's shell: a clean environment, the checkout's folder.
cat >"$root/root/fresh-check.sh" <<'INNER'
#!/bin/bash
set -uo pipefail
cd /root/smbdd
port=$1 run_tests=$2; shift 2
seconds() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.0f", b - a}'; }
say() { printf '[fresh-root inside] %s\n' "$*"; }

# 1. ./dev.sh serve: its install step, then the lab default (only the port and address given,
#    so that it neither binds this machine's 445 nor listens beyond loopback).
t=$(date +%s.%N)
./dev.sh serve --listen 127.0.0.1 --port "$port" >/root/serve.log 2>&1 &
server=$!
until grep -q "connect with" /root/serve.log 2>/dev/null; do
    if ! kill -0 "$server" 2>/dev/null; then
        say "FAIL: ./dev.sh serve exited before serving"; tail -30 /root/serve.log; exit 1
    fi
    sleep 1
done
serve_ready=$(seconds "$t")
password=$(cat /var/lib/smbdd/lab-password)
echo "written in the fresh root" >/root/hello.txt
listing=$(smbclient -s /dev/null //127.0.0.1/share -p "$port" -U "smbuser%$password" -m SMB3_11 \
          -c 'put /root/hello.txt hello.txt; ls' 2>&1)
kill -TERM "$server"; wait "$server"
echo "$listing"
if ! grep -q "hello.txt" <<<"$listing" || ! cmp -s /root/hello.txt /var/lib/smbdd/share/hello.txt; then
    say "FAIL: smbclient could not put and list a file"; tail -30 /root/serve.log; exit 1
fi
say "serve: ready after $serve_ready s (install included); smbclient put and listed hello.txt"
echo "serve_s $serve_ready" >>/root/timings.txt
[[ $run_tests == 1 ]] || exit 0

# 2. ./dev.sh test, as .ci/run calls it.
t=$(date +%s.%N)
./dev.sh test "$@"
rc=$?
echo "test_s $(seconds "$t")" >>/root/timings.txt
say "test: exit $rc after $(seconds "$t") s"
exit $rc
INNER
chmod +x "$root/root/fresh-check.sh"
rm -f "$root/root/timings.txt"

log "running ./dev.sh serve then ./dev.sh test inside (port $port; output in $logs/inside.log)"
export FRESH_ROOT=$root
set +e
timeout -k 30 "${SMBDD_FRESH_TIMEOUT:-5400}" unshare --mount --pid --fork --propagation private bash -c '
    set -e
    r=$FRESH_ROOT
    mount --rbind /dev "$r/dev"
    mount -t tmpfs -o mode=1777 shm "$r/dev/shm"       # its own POSIX shared memory
    mount --rbind /sys "$r/sys"
    mount -t proc proc "$r/proc"
    mkdir -p "$r/run/lock" /run/lock
    mount --bind /run/lock "$r/run/lock"              # one lab VM at a time, machine-wide
    n=$1; shift
    exec chroot "$r" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${@:1:n}" \
        /bin/bash /root/fresh-check.sh "${@:n+1}"
' fresh-root "${#machine_env[@]}" "${machine_env[@]}" "$port" "$run_tests" "${pytest_args[@]}" \
    </dev/null 2>&1 | tee "$logs/inside.log"
rc=${PIPESTATUS[0]}
set -e
cp "$root/root/serve.log" "$logs/" 2>/dev/null || true
cp "$root/root/timings.txt" "$logs/" 2>/dev/null || true
timings=$( { tr '\n' ' ' <"$logs/timings.txt"; } 2>/dev/null || true)
log "exit $rc; debootstrap_s $debootstrap_s $timings"
exit "$rc"
