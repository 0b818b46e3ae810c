#!/usr/bin/env bash
# Build the Linux SMB client (cifs.ko) with CONFIG_CIFS_SMB_DIRECT for the lab VM's kernel.
#
# Debian's kernel is built without SMB Direct in cifs.ko, so the lab rebuilds just that module from
# Debian's own linux-source-6.1 tarball against linux-headers-$KVER (see shared/LAB.md).  The
# result is cached under ${SMBDD_CACHE:-/var/cache/smbdd}/cifs-$KVER/cifs.ko together with a key
# (kernel, package versions, this recipe); when the key matches, the script exits at once.
#
# Usage: build-cifs.sh [--force]      prints the module's path on stdout.
# Needs: linux-source-6.1 linux-headers-$KVER gcc make (+ flex/bison not needed for modules).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kbuild-lib.sh
source "$here/kbuild-lib.sh"

force=0
[[ ${1:-} == --force ]] && force=1

dest=$LAB_CACHE/cifs-$LAB_KVER
lab_check_inputs
key=$(lab_cache_key cifs CONFIG_CIFS_SMB_DIRECT=y "$(cat "${BASH_SOURCE[0]}")")
if [[ $force == 0 && -f $dest/cifs.ko && "$(cat "$dest/cifs.ko.key" 2>/dev/null)" == "$key" ]]; then
    lab_log "cached: $dest/cifs.ko"
    echo "$dest/cifs.ko"
    exit 0
fi

start=$(date +%s.%N)
work=$(mktemp -d "${TMPDIR:-/tmp}/smbdd-cifs-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
lab_log "extracting fs/smb from $LAB_SRC_TARBALL"
lab_extract "$work" fs/smb fs/internal.h scripts/asn1_compiler.c
# Linux 6.1's smbd_send() sends each page of an inline request in max_iov_size pieces but
# bounds each piece only by the bytes left in the message, not by what is left of the page:
# a 4096-byte page goes out as 4 x 1340 = 5360 bytes. Every signed or sealed write larger than
# one fragment reaches the server corrupted (seen in the lab: smbdd refuses it for its bad
# signature or AEAD tag, so nothing corrupt is stored). Later kernels rewrote this loop; the
# lab bounds the piece by the page so that signed and sealed SMB Direct I/O can be tested.
smbdirect="$work/src/fs/smb/client/smbdirect.c"
python3 - "$smbdirect" <<'PY'
import sys
path = sys.argv[1]
src = open(path).read()
old = "size = min_t(unsigned int, max_iov_size, remaining_data_length);"
new = ("size = min_t(unsigned int, min_t(unsigned int, max_iov_size, buflen - j * max_iov_size), "
       "remaining_data_length);")
if src.count(old) != 1:
    sys.exit("smbd_send() page loop not found as expected in smbdirect.c: update build-cifs.sh")
open(path, "w").write(src.replace(old, new))
PY
lab_log "patched smbd_send() page-piece bound"
lab_make_objtree "$work"
lab_log "building cifs.ko (SMB Direct) against $LAB_HEADERS"
# CONFIG_CIFS_SMB_DIRECT=y selects smbdirect.o in the Makefile; the -D makes the #ifdefs in the
# C sources see it, since the headers' autoconf.h was generated without it.
lab_kmake "$work" fs/smb/client CONFIG_CIFS=m CONFIG_CIFS_SMB_DIRECT=y \
    KCFLAGS=-DCONFIG_CIFS_SMB_DIRECT=1
lab_install_cached "$work" fs/smb/client cifs.ko "$dest" "$key"
lab_log "built $dest/cifs.ko ($(stat -c %s "$dest/cifs.ko") bytes) in $(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{printf "%.1f", a-b}') s"
echo "$dest/cifs.ko"
