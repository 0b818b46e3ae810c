#!/usr/bin/env bash
# Runs INSIDE the lab VM (bench/rdma_bench.py boots it). One boot measures, in this order:
#   raw verbs:  ib_write_bw -R / ib_read_bw -R (1 MiB messages) and ib_send_lat -R (64 B)
#   smbdd over SMB Direct (mount -o rdma): dd 1 MiB direct write/read, fio QD1/QD4 seq write/read,
#              512-byte direct reads at QD1 (inline messages: the per-message cost)
#   smbdd over TCP (the same share, the VM's loopback), the same columns
#   ksmbd over SMB Direct, then over TCP, the same columns, when LAB_KSMBD_KO (ksmbd.ko built by
#              deploy/lab/build-ksmbd.sh) and LAB_KSMBD_TOOLS (ksmbd-tools 3.5.2 unpacked by
#              deploy/lab/fetch-ksmbd-tools.sh) are given.
# Both servers serve the same directory to the same cifs.ko with the same mount options; only one
# runs at a time (both want rdma_cm port 445): ksmbd.ko is unloaded while smbdd runs, and each
# server is started only once no RDMA listener is left from the previous one.
# BENCH_RUNS=N repeats the whole round (raw bandwidth, smbdd, ksmbd) N times and keeps each job's
# median: interleaved rounds, because on a shared 2-core host the emulated link's speed drifts by
# 2x within minutes and back-to-back blocks would hand that drift to one server.  Every run's
# value is in bench-runs.txt.
# Results: one "name value" line each in $LAB_OUT/bench.txt (MiB/s, or microseconds for lat);
# /proc/fs/cifs/DebugData of each mount in $LAB_OUT/debugdata-*.txt.
set -u
SIZE_MIB=${BENCH_SIZE_MIB:-256}
RUNS=${BENCH_RUNS:-1}
out=$LAB_OUT/bench.txt
: >"$out"
: >"$LAB_OUT/bench-runs.txt"
: >"$LAB_OUT/bench-ksmbd.log"
note() { echo "$1 $2" | tee -a "$out"; }
log() { echo "[bench] $*" >&2; }
note runs "$RUNS"
note size_mib "$SIZE_MIB"
record() {  # record NAME CMD...: run CMD once, keep its output as one run of NAME
    echo "$1 $("${@:2}")" >>"$LAB_OUT/bench-runs.txt"
}
cpu_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }  # user nice sys irq softirq
record_cpu() {  # record_cpu NAME CMD...: as record, and NAME_cpu: the whole VM's busy CPU in ms
    local b0 v   # per MiB moved (client, server and rxe together; ticks are 10 ms)
    b0=$(cpu_busy)
    v=$("${@:2}")
    echo "$1 $v" >>"$LAB_OUT/bench-runs.txt"
    if [[ $v =~ ^[0-9.]+$ ]]; then
        echo "${1}_cpu $(awk -v d=$(($(cpu_busy) - b0)) -v m="$SIZE_MIB" 'BEGIN {printf "%.1f", d * 10 / m}')"
    else
        echo "${1}_cpu failed"
    fi >>"$LAB_OUT/bench-runs.txt"
}
summarize() {  # each name's median over the runs (non-numbers: failed runs) into bench.txt
    awk '{ if (!($1 in n)) order[++k] = $1
           if ($2 ~ /^[0-9.]+$/) v[$1, ++n[$1]] = $2; else n[$1] += 0 }
         END { for (i = 1; i <= k; i++) {
                 name = order[i]; c = n[name]
                 if (c == 0) { print name, "failed"; continue }
                 for (x = 1; x <= c; x++) a[x] = v[name, x]
                 for (x = 2; x <= c; x++) for (y = x; y > 1 && a[y - 1] + 0 > a[y] + 0; y--) {
                     t = a[y]; a[y] = a[y - 1]; a[y - 1] = t }
                 print name, (c % 2) ? a[(c + 1) / 2] : sprintf("%.1f", (a[c / 2] + a[c / 2 + 1]) / 2) } }' \
        "$LAB_OUT/bench-runs.txt" | tee -a "$out"
}

# vm-setup.sh loads ksmbd.ko when asked.  Idle it listens nowhere (ksmbd starts its TCP and RDMA
# listeners only when ksmbd.mountd starts the server), but out it goes until its turn anyway.
grep -q '^ksmbd ' /proc/modules && rmmod ksmbd

perf_mibps() {  # perftest prints "bytes iterations BW_peak BW_average MsgRate" in MB/s
    awk '/^ *1048576/ {printf "%.1f", $4 * 1000000 / 1048576}' "$1"
}
raw_once() {  # raw_once TOOL: server and client of one perftest over rdma_cm on rxe0; MiB/s
    timeout 120 "$1" -R -s 1048576 -n 200 >"$LAB_OUT/$1-server.txt" 2>&1 &
    sleep 2
    timeout 120 "$1" -R -s 1048576 -n 200 10.77.0.1 >"$LAB_OUT/$1.txt" 2>&1
    wait
    perf_mibps "$LAB_OUT/$1.txt"
}
send_lat_us() {  # one ib_send_lat -R 64 B run: t_avg in microseconds
    timeout 60 ib_send_lat -R -s 64 -n 1000 >/dev/null 2>&1 &
    sleep 2
    timeout 60 ib_send_lat -R -s 64 -n 1000 10.77.0.1 >"$LAB_OUT/ib_send_lat.txt" 2>&1
    wait
    awk '/^ *64 / {print $5}' "$LAB_OUT/ib_send_lat.txt"
}
# perftest calibrates the CPU clock by sampling; on a loaded host the fit can fail
# ("Correlation coefficient r^2 < 0.9") and every time reads "inf": try again.
for _ in 1 2 3; do
    lat=$(send_lat_us)
    [[ $lat =~ ^[0-9.]+$ ]] && break
done
note raw_send_lat_us "$lat"

share=/tmp/bench-share; mnt=/tmp/bench-mnt
mkdir -p "$share" "$mnt"
# The shared directory lives on ext4, as on a storage host, not on the VM's /tmp (overlayfs on
# tmpfs, which 6.1 does not let read with RWF_NOWAIT, so every read would take smbdd's
# helper-thread path). The image sits in the VM's RAM; both servers serve the same directory.
img=/run/bench-ext4.img
truncate -s "$((SIZE_MIB * 3 + 512))M" "$img"
if mkfs.ext4 -q -F "$img" && { modprobe loop 2>/dev/null; mount -o loop "$img" "$share"; }; then
    note share_fs ext4
else
    log "ext4 share unavailable; serving /tmp (overlayfs)"
    note share_fs overlayfs
fi
dd if=/dev/urandom of=/tmp/bench-src bs=1M count="$SIZE_MIB" status=none

dd_mibps() {  # dd_mibps IF OF FLAG
    local t0 t1
    t0=$(date +%s.%N)
    dd if="$1" of="$2" bs=1M count="$SIZE_MIB" "$3" status=none || return 1
    t1=$(date +%s.%N)
    echo "$SIZE_MIB $t0 $t1" | awk '{printf "%.1f", $1 / ($3 - $2)}'
}
fio_mibps() {  # fio_mibps RW QD FILE
    fio --name=b --filename="$3" --rw="$1" --bs=1M --iodepth="$2" --ioengine=libaio --direct=1 \
        --size="${SIZE_MIB}M" --output-format=terse --terse-version=3 2>/dev/null |
        awk -F';' -v rw="$1" '{bw = (rw == "read") ? $7 : $48; printf "%.1f", bw / 1024}'
}
lat_us() {  # 512-byte direct reads at QD1: each is one small inline SMB2 READ round trip
    fio --name=l --filename="$1" --rw=randread --bs=512 --iodepth=1 --ioengine=psync --direct=1 \
        --size=4M --runtime=10 --time_based --output-format=terse --terse-version=3 2>/dev/null |
        awk -F';' '{printf "%.0f", $40}'
}
measure() {  # measure LABEL: the columns on the share mounted at $mnt
    record_cpu "${1}_dd_write" dd_mibps /tmp/bench-src "$mnt/dd.bin" oflag=direct
    record_cpu "${1}_dd_read" dd_mibps "$mnt/dd.bin" /dev/null iflag=direct
    record_cpu "${1}_fio_qd1_write" fio_mibps write 1 "$mnt/fio.bin"
    record_cpu "${1}_fio_qd1_read" fio_mibps read 1 "$mnt/fio.bin"
    record_cpu "${1}_fio_qd4_write" fio_mibps write 4 "$mnt/fio.bin"
    record_cpu "${1}_fio_qd4_read" fio_mibps read 4 "$mnt/fio.bin"
    record "${1}_lat512_us" lat_us "$mnt/fio.bin"
    rm -f "$mnt/dd.bin" "$mnt/fio.bin"
}
opts=username=bench,password=bench-pw,cache=none
mount_measure() {  # mount_measure LABEL UNC [EXTRA_OPTS]: mount, measure, keep DebugData, unmount
    if ! mount -t cifs "$2" "$mnt" -o "${3:+$3,}vers=3.1.1,$opts"; then
        log "$1: mount $2 failed"; note "${1}_status" mount-failed; return 1
    fi
    # What cifs.ko negotiated (SMB Direct sizes, credits, receive-buffer use, signing).
    cat /proc/fs/cifs/DebugData >"$LAB_OUT/debugdata-$1.txt" 2>&1
    measure "$1"
    cat /proc/fs/cifs/DebugData >>"$LAB_OUT/debugdata-$1.txt" 2>&1
    umount "$mnt"
}
rdma_listeners() { rdma resource show cm_id 2>/dev/null | grep -c 'state LISTEN'; }
wait_no_listener() {  # wait_no_listener WHO: the previous server's RDMA listeners must be gone
    for _ in $(seq 30); do
        [[ $(rdma_listeners) == 0 ]] && return 0
        sleep 1
    done
    log "RDMA listeners still open before starting $1:"; rdma resource show cm_id >&2
    note "${1}_status" "listener-left-by-previous-server"
    return 1
}

# ---- smbdd ----
ready() { [[ $(grep -c "worker [0-9]* ready" "$LAB_OUT/bench-smbdd.log") -gt $(grep -c "serves client" "$LAB_OUT/bench-smbdd.log") ]]; }
smbdd_round() {
    wait_no_listener smbdd || return 1
    "$LAB_PYTHON" -m smbdd.cli --share "data=$share" --user bench:bench-pw --unix-identity daemon --listen 127.0.0.1 --port 4455 \
        --device rxe0 --spare-workers 2 >"$LAB_OUT/bench-smbdd.log" 2>&1 &
    smbdd_pid=$!
    for _ in $(seq 300); do ready && break; sleep 1; done
    mount_measure smbdd_rdma //10.77.0.1/data rdma
    for _ in $(seq 300); do ready && break; sleep 1; done
    mount_measure smbdd_tcp //127.0.0.1/data port=4455
    kill -TERM "$smbdd_pid"; wait "$smbdd_pid"
    grep -E "connection closed" "$LAB_OUT/bench-smbdd.log" | tail -3 >&2
}

# ---- ksmbd (kernel SMB server, SMB Direct build) ----
ksmbd_tools=${LAB_KSMBD_TOOLS:-}/usr/sbin
ksmbd_dir=/tmp/bench-ksmbd
ksmbd_pid=
ksmbd_start() {
    insmod "$LAB_KSMBD_KO" || return 1
    # A fresh user database each round (ksmbd.adduser refuses a user that exists), and no lock
    # file left by the previous round's ksmbd.mountd.
    rm -rf "$ksmbd_dir"
    mkdir -p "$ksmbd_dir"
    pgrep -x ksmbd.mountd >/dev/null || rm -f /run/ksmbd.lock
    # Signing: ksmbd's default "disabled" means allowed when the client asks, not required, the
    # same as smbdd's default (--signing auto).  cifs.ko does not ask unless the server requires
    # it, so neither session is signed and both get RDMA read/write for the 1 MiB I/O.
    # force user: the bench user has no Unix account in the VM; the files belong to root, as
    # smbdd (running as root) creates them.
    cat >"$ksmbd_dir/ksmbd.conf" <<EOF
[global]
	server signing = disabled
[data]
	path = $share
	read only = no
	force user = root
	force group = root
EOF
    echo "--- round $run" >>"$LAB_OUT/bench-ksmbd.log"
    "$ksmbd_tools/ksmbd.adduser" -a bench -p bench-pw -C "$ksmbd_dir/ksmbd.conf" -P "$ksmbd_dir/pwd.db" \
        >>"$LAB_OUT/bench-ksmbd.log" 2>&1 || return 1
    "$ksmbd_tools/ksmbd.mountd" -n -C "$ksmbd_dir/ksmbd.conf" -P "$ksmbd_dir/pwd.db" \
        >>"$LAB_OUT/bench-ksmbd.log" 2>&1 &
    ksmbd_pid=$!
    # Up when the kernel's RDMA listener exists (it is opened after the TCP one).
    for _ in $(seq 60); do
        rdma resource show cm_id 2>/dev/null | grep -q 'LISTEN.*comm \[ksmbd\]' && return 0
        sleep 0.5
    done
    log "ksmbd did not start listening"; cat "$LAB_OUT/bench-ksmbd.log" >&2
    return 1
}
ksmbd_stop() {  # ksmbd.control -s stops mountd and the kernel server; then unload the module
    "$ksmbd_tools/ksmbd.control" -s >>"$LAB_OUT/bench-ksmbd.log" 2>&1
    if [[ -n ${ksmbd_pid:-} ]]; then
        wait "$ksmbd_pid"
        ksmbd_pid=
    fi
    rmmod ksmbd || log "rmmod ksmbd failed"
}
ksmbd_round() {
    wait_no_listener ksmbd || return 1
    if ksmbd_start; then
        mount_measure ksmbd_rdma //10.77.0.1/data rdma
        mount_measure ksmbd_tcp //127.0.0.1/data
    else
        note ksmbd_status "start-failed-in-round-$run"
    fi
    ksmbd_stop
}
with_ksmbd=1
if [[ -z ${LAB_KSMBD_KO:-} || ! -x $ksmbd_tools/ksmbd.mountd ]]; then
    log "ksmbd skipped: needs LAB_KSMBD_KO and LAB_KSMBD_TOOLS (see bench/README.md)"
    note ksmbd_status not-run
    with_ksmbd=0
else
    note ksmbd_tools "$("$ksmbd_tools/ksmbd.mountd" -V 2>&1 | grep -o 'version : .*' | cut -d' ' -f3)"
fi

for run in $(seq "$RUNS"); do
    log "round $run of $RUNS"
    record raw_ib_write_bw raw_once ib_write_bw
    record raw_ib_read_bw raw_once ib_read_bw
    smbdd_round
    ((with_ksmbd)) && ksmbd_round
done
summarize
# A kernel oops (ksmbd or cifs) invalidates what followed it: say so in the results.
note kernel_oopses "$(dmesg | grep -cE 'BUG:|Oops|general protection fault')"
