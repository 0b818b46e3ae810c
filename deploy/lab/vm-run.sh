#!/usr/bin/env bash
# Boot the soft-RoCE lab VM (Debian's 6.1 kernel under QEMU via virtme-ng, no KVM, no network
# device), run deploy/lab/vm-setup.sh, then CMD inside it; exit with CMD's status.
#
# Usage: deploy/lab/vm-run.sh "CMD"
#   CMD runs with bash in the repository root, as root, with these variables set:
#     LAB_OUT     a directory writable from the VM and kept on the host (results, logs)
#     LAB_PYTHON  the project's Python (venv if present, else /usr/bin/python3)
#     LAB_CIFS_KO the SMB Direct cifs.ko (unless SMBDD_LAB_NO_CIFS=1)
#     LAB_KSMBD_KO the SMB Direct ksmbd.ko (only with SMBDD_LAB_KSMBD=1)
# Environment (host side):
#   SMBDD_LAB_PYTHON   the Python (of a venv with pytest, --system-site-packages) to use inside
#   SMBDD_LAB_OUT      results directory (default: a new /tmp/smbdd-lab.XXXXXX); printed at the end
#   SMBDD_LAB_KVER     guest kernel version (default 6.1.0-56-amd64)
#   SMBDD_LAB_MEMORY   guest memory (default 3G), SMBDD_LAB_CPUS (default 2)
#   SMBDD_LAB_TIMEOUT  seconds before the VM is killed (default 1200)
#   SMBDD_LAB_NO_CIFS  1 to skip building/loading cifs.ko
#   SMBDD_LAB_KSMBD    1 to also build ksmbd.ko (SMB Direct) and hand it over as LAB_KSMBD_KO
#                      (vm-setup.sh loads it; starting a share is up to CMD)
#   SMBDD_LAB_VERBOSE  1 to keep the guest kernel's messages (boot, oops, panic) in console.log:
#                      vng --verbose (loglevel=7) instead of quiet; for a guest that dies silently
#   SMBDD_LAB_NATIVE   auto (default): when the running kernel is SMBDD_LAB_KVER and has rdma_rxe,
#                      run CMD on this machine, without a VM; 1 forces that, 0 always boots the VM.
#                      vm-setup.sh's private veth pair and rxe0 stay for the next run: deleting
#                      rxe0 blocks while a kernel SMB Direct client (cifs.ko) still holds an id on
#                      it, as one does after the failure tests ("rdma link delete rxe0; ip link
#                      delete veth0" removes them once nothing uses them)
# Exit status: CMD's; 124 on timeout; 125 if the VM did not run CMD at all (boot failure);
#   77 when the lab cannot run on this machine (no qemu, kernel image or vng).
# Works with no terminal and no stdin (CI): vng gets </dev/null and runs in its own session.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cmd=${1:?usage: vm-run.sh \"CMD\"}

kver=${SMBDD_LAB_KVER:-6.1.0-56-amd64}
kernel=/boot/vmlinuz-$kver
# The project venv (made with --system-site-packages so pyverbs is visible): SMBDD_LAB_PYTHON's,
# else the one deploy/install-deps.sh makes ($SMBDD_VENV, default /opt/smbdd/venv), else the
# checkout's own .venv.  It provides vng outside and pytest inside.
if [[ -n ${SMBDD_LAB_PYTHON:-} ]]; then
    venv=$(dirname "$(dirname "$SMBDD_LAB_PYTHON")")
else
    venv=${SMBDD_VENV:-/opt/smbdd/venv}
    [[ -x $venv/bin/python ]] || venv=$repo/.venv
fi
PATH=$venv/bin:$PATH   # vng runs virtme-run from PATH
export PATH

log() { printf '[vm-run %s] %s\n' "$(date +%T)" "$*" >&2; }
# A machine whose own kernel has RDMA runs the same CMD directly: the lab is only a way to get
# Debian's kernel (with rdma_rxe) where the host kernel has no RDMA.
native=${SMBDD_LAB_NATIVE:-auto}
if [[ $native == auto ]]; then
    native=0
    if [[ $(uname -r) == "$kver" ]] && modprobe -n -q rdma_rxe 2>/dev/null; then
        native=1
    fi
fi
missing=()
if [[ $native != 1 ]]; then
    command -v qemu-system-x86_64 >/dev/null || missing+=("qemu-system-x86_64 (apt: qemu-system-x86)")
    [[ -r $kernel ]] || missing+=("$kernel (apt: linux-image-$kver)")
    command -v vng >/dev/null || missing+=("vng (pip: virtme-ng)")
    [[ -x /bin/busybox ]] || command -v busybox >/dev/null || missing+=("busybox (apt: busybox-static)")
fi
if ((${#missing[@]})); then
    log "lab unavailable, missing: ${missing[*]}"
    exit 77
fi

# One lab VM at a time: two emulated guests on a 2-core host starve each other past cifs.ko's
# 30 s NEGOTIATE timeout, and the module builds share one cache.  A second caller waits.
mkdir -p /run/lock
exec 9>/run/lock/smbdd-lab.lock
if ! flock -n 9; then
    log "another lab VM is running; waiting for it"
    flock 9
fi

out=${SMBDD_LAB_OUT:-$(mktemp -d /tmp/smbdd-lab.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
t0=$(date +%s.%N)

cifs_ko=
if [[ ${SMBDD_LAB_NO_CIFS:-0} != 1 ]]; then
    tb=$(date +%s.%N)
    cifs_ko=$(SMBDD_LAB_KVER=$kver "$here/build-cifs.sh" 2>>"$out/build-cifs.log" | tail -1) || {
        log "build-cifs.sh failed, see $out/build-cifs.log"; tail -20 "$out/build-cifs.log" >&2; exit 1; }
    echo "cifs_build_s $(awk -v a="$(date +%s.%N)" -v b="$tb" 'BEGIN{printf "%.1f", a-b}')" >>"$out/timings.txt"
    # virtme-ng hides /var/cache (and /tmp) behind guest tmpfs mounts: hand the module over
    # through the shared results folder.
    cp "$cifs_ko" "$out/cifs.ko"
    cifs_ko=$out/cifs.ko
fi

ksmbd_ko=
if [[ ${SMBDD_LAB_KSMBD:-0} == 1 ]]; then
    ksmbd_ko=$(SMBDD_LAB_KVER=$kver "$here/build-ksmbd.sh" 2>>"$out/build-ksmbd.log" | tail -1) || {
        log "build-ksmbd.sh failed, see $out/build-ksmbd.log"; exit 1; }
    cp "$ksmbd_ko" "$out/ksmbd.ko"
    ksmbd_ko=$out/ksmbd.ko
fi

python=/usr/bin/python3
[[ -x $venv/bin/python ]] && python=$venv/bin/python
[[ -n ${SMBDD_LAB_PYTHON:-} ]] && python=$SMBDD_LAB_PYTHON

# The guest sees the host's root read-only: the command travels as a script in the rw folder,
# with the environment it needs spelled out (vng does not forward the host's environment).
inner=$out/inner.sh
{
    echo '#!/bin/bash'
    printf 'export LAB_OUT=%q LAB_PYTHON=%q LAB_CIFS_KO=%q LAB_KSMBD_KO=%q LAB_REPO=%q\n' \
        "$out" "$python" "$cifs_ko" "$ksmbd_ko" "$repo"
    printf 'export PATH=%q\n' "$venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo 'export PYTHONDONTWRITEBYTECODE=1 HOME=/tmp TMPDIR=/tmp'
    echo 'echo "guest_up_epoch $(date +%s.%N)" >>"$LAB_OUT/timings.txt"'
    echo 'cd "$LAB_REPO"'
    printf 'bash %q >"$LAB_OUT/vm-setup.log" 2>&1 || { echo "vm-setup failed:"; cat "$LAB_OUT/vm-setup.log"; exit 125; }\n' "$here/vm-setup.sh"
    echo 'set +e'
    printf 'bash -c %q\n' "$cmd"
    echo 'rc=$?'
    echo 'dmesg >"$LAB_OUT/dmesg.txt" 2>&1'
    echo 'echo "$rc" >"$LAB_OUT/exit-status"'
    echo 'exit $rc'
} >"$inner"
chmod +x "$inner"
rm -f "$out/exit-status" "$out/timed-out"

if [[ $native == 1 ]]; then
    log "this kernel has RDMA: running CMD here, no VM (results in $out)"
    tvm=$(date +%s.%N)
    set +e
    timeout -k 20 "${SMBDD_LAB_TIMEOUT:-1200}" bash "$inner" </dev/null >"$out/console.log" 2>&1
    rc=$?
    set -e
    cat "$out/console.log" >&2
    ((rc == 124)) && log "timed out"
    echo "native_total_s $(awk -v a="$(date +%s.%N)" -v b="$tvm" 'BEGIN{printf "%.1f", a-b}')" >>"$out/timings.txt"
    log "exit $rc; $(tr '\n' ' ' <"$out/timings.txt")"
    echo "LAB_OUT=$out"
    exit "$rc"
fi

log "booting $kernel (results in $out)"
tvm=$(date +%s.%N)
# The VM runs in its own session (setsid: no controlling terminal, own process group) with no
# stdin, exactly as under CI; on timeout the whole group (vng, qemu, helpers) is killed, so no
# orphaned qemu keeps the caller's pipes open.
timeout_s=${SMBDD_LAB_TIMEOUT:-1200}
verbose=()
[[ ${SMBDD_LAB_VERBOSE:-0} == 1 ]] && verbose=(--verbose)
setsid vng --disable-kvm --cpus "${SMBDD_LAB_CPUS:-2}" --memory "${SMBDD_LAB_MEMORY:-3G}" "${verbose[@]}" \
    --rwdir "$out" --run "$kernel" --exec "$inner" </dev/null >"$out/console.log" 2>&1 &
vm_pid=$!
tail -n +1 --pid="$vm_pid" -f "$out/console.log" >&2 &
tail_pid=$!
setsid bash -c "sleep $timeout_s; echo timeout >'$out/timed-out'; kill -TERM -- -$vm_pid; sleep 20; kill -KILL -- -$vm_pid" \
    </dev/null >/dev/null 2>&1 &
watchdog=$!
# If this script is stopped (a caller's timeout, Ctrl-C, CI cancelling), take the VM with it:
# it runs in its own session, so nothing else would.
trap 'kill -TERM -- -"$vm_pid" -"$watchdog" 2>/dev/null; sleep 2; kill -KILL -- -"$vm_pid" 2>/dev/null' TERM INT HUP
set +e
wait "$vm_pid"
vng_rc=$?
kill -- -"$watchdog" 2>/dev/null
wait "$tail_pid" "$watchdog" 2>/dev/null
set -e
tend=$(date +%s.%N)
if [[ -f $out/timings.txt ]] && up=$(awk '/^guest_up_epoch/{print $2}' "$out/timings.txt") && [[ -n $up ]]; then
    echo "vm_boot_s $(awk -v a="$up" -v b="$tvm" 'BEGIN{printf "%.1f", a-b}')" >>"$out/timings.txt"
fi
echo "vm_total_s $(awk -v a="$tend" -v b="$tvm" 'BEGIN{printf "%.1f", a-b}')" >>"$out/timings.txt"
echo "lab_total_s $(awk -v a="$tend" -v b="$t0" 'BEGIN{printf "%.1f", a-b}')" >>"$out/timings.txt"

if [[ -f $out/timed-out ]]; then
    log "timed out after $timeout_s s"; rc=124
elif [[ -f $out/exit-status ]]; then
    rc=$(cat "$out/exit-status")
else
    log "the VM did not finish CMD (vng exit $vng_rc), see $out/console.log"; rc=125
fi
log "exit $rc; $(tr '\n' ' ' <"$out/timings.txt")"
echo "LAB_OUT=$out"
exit "$rc"
