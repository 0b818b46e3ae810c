#!/usr/bin/env bash
# Build the Linux kernel SMB server (ksmbd.ko) with CONFIG_SMB_SERVER_SMBDIRECT for the lab VM:
# a kernel SMB Direct server to benchmark smbdd against (shared/LAB.md).
#
# Same recipe as build-cifs.sh (Debian's linux-source-6.1 + linux-headers-$KVER, private objtree
# with our asn1_compiler), plus one source fix applied here: 6.1.0-56's ksmbd dereferences a NULL
# opinfo in opinfo_put() (called from smb2_open for an open that got no oplock, e.g. the share
# root) and oopses; a NULL check at the top of opinfo_put() avoids it.
# Cached under ${SMBDD_CACHE:-/var/cache/smbdd}/ksmbd-$KVER/ksmbd.ko with a key.
#
# Usage: build-ksmbd.sh [--force]      prints the module's path on stdout.
# In the VM: modprobe -a ib_core rdma_cm crypto deps (see vm-setup.sh), then insmod; the user-space
# side needs ksmbd-tools >= 3.5: fetch-ksmbd-tools.sh unpacks 3.5.2 from bookworm-backports.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kbuild-lib.sh
source "$here/kbuild-lib.sh"

force=0
[[ ${1:-} == --force ]] && force=1

dest=$LAB_CACHE/ksmbd-$LAB_KVER
lab_check_inputs
key=$(lab_cache_key ksmbd CONFIG_SMB_SERVER_SMBDIRECT=y opinfo_put-null-check "$(cat "${BASH_SOURCE[0]}")")
if [[ $force == 0 && -f $dest/ksmbd.ko && "$(cat "$dest/ksmbd.ko.key" 2>/dev/null)" == "$key" ]]; then
    lab_log "cached: $dest/ksmbd.ko"
    echo "$dest/ksmbd.ko"
    exit 0
fi

start=$(date +%s.%N)
work=$(mktemp -d "${TMPDIR:-/tmp}/smbdd-ksmbd-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
lab_log "extracting fs/smb from $LAB_SRC_TARBALL"
lab_extract "$work" fs/smb fs/internal.h scripts/asn1_compiler.c
lab_make_objtree "$work"

# The opinfo_put NULL check.  Applied with an exact-match edit so that a source where the function
# changed makes the build stop instead of silently skipping the fix.
oplock=$work/src/fs/smb/server/oplock.c
lab_replace_once "$oplock" "opinfo_put()" <<'PATCH'
void opinfo_put(struct oplock_info *opinfo)
{
--- becomes ---
void opinfo_put(struct oplock_info *opinfo)
{
	if (!opinfo)
		return;

PATCH
grep -q -A3 '^void opinfo_put' "$oplock" && lab_log "patched opinfo_put() NULL check"

lab_log "building ksmbd.ko (SMB Direct) against $LAB_HEADERS"
lab_kmake "$work" fs/smb/server CONFIG_SMB_SERVER=m CONFIG_SMB_SERVER_SMBDIRECT=y \
    KCFLAGS=-DCONFIG_SMB_SERVER_SMBDIRECT=1
lab_install_cached "$work" fs/smb/server ksmbd.ko "$dest" "$key"
lab_log "built $dest/ksmbd.ko ($(stat -c %s "$dest/ksmbd.ko") bytes) in $(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{printf "%.1f", a-b}') s"
echo "$dest/ksmbd.ko"
