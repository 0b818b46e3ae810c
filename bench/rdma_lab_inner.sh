#!/usr/bin/env bash
# Runs INSIDE the lab VM (bench/rdma_bench.sh boots it). One boot measures, in this order:
#   raw verbs:  ib_write_bw -R / ib_read_bw -R (1 MiB messages) and ib_send_lat -R (64 B)
#   smbdd over SMB Direct (mount -o rdma): dd 1 MiB direct write/read, fio QD1/QD4 seq write/read,
#              512-byte direct reads at QD1 (inline messages: the proxy's per-message cost)
#   smbdd over TCP (the same share, the VM's loopback), the same columns
#   ksmbd over SMB Direct when a ksmbd.ko and ksmbd-tools are available (see shared/LAB.md)
# Results: one "name value" line each in $LAB_OUT/bench.txt (MiB/s, or microseconds for lat).
set -u
SIZE_MIB=${BENCH_SIZE_MIB:-256}
out=$LAB_OUT/bench.txt
: >"$out"
note() { echo "$1 $2" | tee -a "$out"; }

perf_mibps() {  # perftest prints "bytes iterations BW_peak BW_average MsgRate" in MB/s
    awk '/^ *1048576/ {printf "%.1f", $4 * 1000000 / 1048576}' "$1"
}
raw() {  # raw TOOL: server and client of one perftest over rdma_cm on rxe0
    timeout 120 "$1" -R -s 1048576 -n 200 >"$LAB_OUT/$1-server.txt" 2>&1 &
    sleep 2
    timeout 120 "$1" -R -s 1048576 -n 200 10.77.0.1 >"$LAB_OUT/$1.txt" 2>&1
    wait
    note "raw_$1" "$(perf_mibps "$LAB_OUT/$1.txt")"
}
raw ib_write_bw
raw ib_read_bw
timeout 60 ib_send_lat -R -s 64 -n 1000 >/dev/null 2>&1 &
sleep 2
timeout 60 ib_send_lat -R -s 64 -n 1000 10.77.0.1 >"$LAB_OUT/ib_send_lat.txt" 2>&1
wait
note raw_send_lat_us "$(awk '/^ *64 / {print $5}' "$LAB_OUT/ib_send_lat.txt")"

share=/tmp/bench-share; mnt=/tmp/bench-mnt
mkdir -p "$share" "$mnt"
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
    note "${1}_dd_write" "$(dd_mibps /tmp/bench-src "$mnt/dd.bin" oflag=direct)"
    note "${1}_dd_read" "$(dd_mibps "$mnt/dd.bin" /dev/null iflag=direct)"
    note "${1}_fio_qd1_write" "$(fio_mibps write 1 "$mnt/fio.bin")"
    note "${1}_fio_qd1_read" "$(fio_mibps read 1 "$mnt/fio.bin")"
    note "${1}_fio_qd4_write" "$(fio_mibps write 4 "$mnt/fio.bin")"
    note "${1}_fio_qd4_read" "$(fio_mibps read 4 "$mnt/fio.bin")"
    note "${1}_lat512_us" "$(lat_us "$mnt/fio.bin")"
    rm -f "$mnt/dd.bin" "$mnt/fio.bin"
}
ready() { [[ $(grep -c "worker [0-9]* ready" "$LAB_OUT/bench-smbdd.log") -gt $(grep -c "serves client" "$LAB_OUT/bench-smbdd.log") ]]; }

"$LAB_PYTHON" -m smbdd.cli --share "data=$share" --user bench:bench-pw --listen 127.0.0.1 --port 4455 \
    --device rxe0 --spare-workers 2 >"$LAB_OUT/bench-smbdd.log" 2>&1 &
smbdd_pid=$!
for _ in $(seq 300); do ready && break; sleep 1; done
opts=username=bench,password=bench-pw,cache=none
if mount -t cifs //10.77.0.1/data "$mnt" -o "rdma,vers=3.1.1,$opts"; then
    measure smbdd_rdma
    umount "$mnt"
else
    echo "smbdd RDMA mount failed" >&2
fi
for _ in $(seq 300); do ready && break; sleep 1; done
if mount -t cifs //127.0.0.1/data "$mnt" -o "port=4455,vers=3.1.1,$opts"; then
    measure smbdd_tcp
    umount "$mnt"
fi
kill -TERM "$smbdd_pid"; wait "$smbdd_pid"
grep -E "connection closed" "$LAB_OUT/bench-smbdd.log" | tail -3 >&2

# ksmbd: only when its module was built (deploy/lab/build-ksmbd.sh) and ksmbd-tools 3.5+ exist.
if [[ -n ${LAB_KSMBD_KO:-} && -x ${LAB_KSMBD_TOOLS:-/nonexistent}/ksmbd.mountd ]]; then
    echo "ksmbd column: see deploy/lab/README.md" >&2
else
    note ksmbd_rdma_dd_read n/a
fi
