#!/usr/bin/env bash
# Runs INSIDE the lab VM: where smbdd's proxy and worker spend their CPU over SMB Direct.
#   deploy/lab/vm-run.sh "bash bench/rdma_profile_inner.sh"     (py-spy in the venv: pip install py-spy)
# smbdd serves an ext4 share on rxe0; cifs.ko mounts it with -o rdma; for each fio job py-spy
# samples the proxy (the smbdd process) and the client's worker for 25 s. Results in $LAB_OUT:
#   cpu.txt          per job: wall seconds; CPU ticks (1/100 s) of the proxy and of the worker,
#                    user and sys apart; the whole VM's user, sys, softirq and idle ticks (2 vCPUs)
#   JOB-fio.txt      fio's terse output (field 7 read KiB/s, 48 write KiB/s, 40 mean read latency us);
#                    dd_new_file has none: it is dd of 256 MiB to a new file, 1 MiB direct writes
#   JOB-proxy.txt, JOB-worker.txt   py-spy's collapsed stacks ("frame;frame;... samples")
# Under soft-RoCE the post of an RDMA read/write moves the data before ibv_post_send returns,
# so the proxy's samples in Endpoint._post_one are mostly rxe's packet work, not Python.
set -u
SPY=$(dirname "$LAB_PYTHON")/py-spy
[[ -x $SPY ]] || { echo "py-spy not in $(dirname "$LAB_PYTHON") (pip install py-spy)" >&2; exit 1; }
share=/tmp/prof-share; mnt=/tmp/prof-mnt
mkdir -p "$share" "$mnt"
truncate -s 1G /run/prof-ext4.img && mkfs.ext4 -q -F /run/prof-ext4.img && modprobe loop 2>/dev/null
mount -o loop /run/prof-ext4.img "$share" || echo "ext4 share unavailable: profiling on /tmp" >&2
"$LAB_PYTHON" -m smbdd.cli --share "data=$share" --user prof:prof-pw --unix-identity daemon --listen 127.0.0.1 --port 4455 \
    --device rxe0 --spare-workers 1 >"$LAB_OUT/smbdd.log" 2>&1 &
smbdd_pid=$!
for _ in $(seq 300); do grep -q "worker [0-9]* ready" "$LAB_OUT/smbdd.log" && break; sleep 1; done
mount -t cifs //10.77.0.1/data "$mnt" -o rdma,vers=3.1.1,username=prof,password=prof-pw,cache=none ||
    { echo "mount failed" >&2; kill "$smbdd_pid"; exit 1; }
worker=$(grep -o "worker [0-9]* serves client" "$LAB_OUT/smbdd.log" | tail -1 | awk '{print $2}')
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }     # user sys
vm_ticks() { awk '/^cpu /{print $2 + $3, $4, $8, $5}' /proc/stat; }  # user sys softirq idle
cpu_line() {  # cpu_line NAME T0 T1 "P0" "W0" "V0": the deltas since the job began
    local p1 w1 v1
    p1=$(ticks "$smbdd_pid"); w1=$(ticks "$worker"); v1=$(vm_ticks)
    echo "$1 $2 $3 $4 $p1 $5 $w1 $6 $v1" | awk '{
        printf "%s wall %.1f proxy_user %d proxy_sys %d worker_user %d worker_sys %d", $1, $3 - $2,
            $6 - $4, $7 - $5, $10 - $8, $11 - $9
        printf " vm_user %d vm_sys %d vm_softirq %d vm_idle %d\n", $16 - $12, $17 - $13, $18 - $14, $19 - $15
    }' | tee -a "$LAB_OUT/cpu.txt"
}
fio --name=prep --filename="$mnt/f.bin" --rw=write --bs=1M --size=64M --direct=1 >/dev/null 2>&1
job() {  # job NAME FIO-ARGS...
    local name=$1; shift
    "$SPY" record --nonblocking --pid "$smbdd_pid" --duration 25 --format raw -o "$LAB_OUT/$name-proxy.txt" \
        >/dev/null 2>&1 &
    local spy1=$!
    "$SPY" record --nonblocking --pid "$worker" --duration 25 --format raw -o "$LAB_OUT/$name-worker.txt" \
        >/dev/null 2>&1 &
    local spy2=$!
    sleep 3
    local p0 w0 v0 t0
    p0=$(ticks "$smbdd_pid"); w0=$(ticks "$worker"); v0=$(vm_ticks); t0=$(date +%s.%N)
    if [[ $1 == --new-file ]]; then  # an extending write, like bench-rdma's dd column
        dd if=/dev/zero of="$mnt/new.bin" bs=1M count=256 oflag=direct status=none
    else
        fio --name=j --filename="$mnt/f.bin" "$@" --runtime=15 --time_based --output-format=terse \
            --terse-version=3 >"$LAB_OUT/$name-fio.txt" 2>&1
    fi
    cpu_line "$name" "$t0" "$(date +%s.%N)" "$p0" "$w0" "$v0"
    rm -f "$mnt/new.bin"
    wait "$spy1" "$spy2"
}
job read1 --rw=read --bs=1M --size=64M --iodepth=1 --ioengine=psync --direct=1
job write1 --rw=write --bs=1M --size=64M --iodepth=1 --ioengine=psync --direct=1
job read4 --rw=read --bs=1M --size=64M --iodepth=4 --ioengine=libaio --direct=1
job dd_new_file --new-file
job lat512 --rw=randread --bs=512 --size=4M --iodepth=1 --ioengine=psync --direct=1
umount "$mnt"
kill -TERM "$smbdd_pid"; wait "$smbdd_pid"
umount "$share" 2>/dev/null
