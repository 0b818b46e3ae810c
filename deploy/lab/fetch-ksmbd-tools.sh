#!/usr/bin/env bash
# Fetch ksmbd-tools 3.5.2 (bookworm-backports) WITHOUT installing it, unpacked into a cache folder,
# and print that folder.  The lab VM runs ksmbd.mountd / ksmbd.adduser from there.
#
# Why not `apt-get install`: Debian 12's own ksmbd-tools 3.4.7 cannot serve shares to the 6.1
# kernel's ksmbd (its share replies carry payload_sz 0: every tree connect fails, LAB.md), and the
# ksmbd-tools package conflicts with samba, which the test suite needs.  So: a private apt state
# (its own sources list naming only bookworm-backports, its own lists and package cache), apt's
# own `update` (InRelease checked against Debian's archive keyring) and `download` (the .deb checked
# against the SHA256 in the signed Packages index), then `dpkg -x`.  The system's apt state, lists
# and locks are never touched.
#
# Usage: fetch-ksmbd-tools.sh [--force]
#   stdout: the folder holding usr/sbin/ksmbd.mountd etc. (default
#           ${SMBDD_CACHE:-/var/cache/smbdd}/ksmbd-tools-3.5.2); reused when already there.
# Environment: SMBDD_KSMBD_TOOLS_VERSION (default 3.5.2), SMBDD_DEBIAN_KEYRING, SMBDD_DEBIAN_MIRROR
#   (default http://deb.debian.org/debian).
set -euo pipefail

version=${SMBDD_KSMBD_TOOLS_VERSION:-3.5.2}
mirror=${SMBDD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache=${SMBDD_CACHE:-/var/cache/smbdd}
dest=$cache/ksmbd-tools-$version
keyring=${SMBDD_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
log() { printf '[fetch-ksmbd-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The shared libraries ksmbd-tools 3.5 links against (Depends of the package): all in Debian 12.
# A missing one is named with its package instead of failing later inside the VM.
check_libs() {  # check_libs DIR
    local missing
    missing=$(ldd "$1/usr/sbin/ksmbd.mountd" 2>&1 | awk '/not found/ {print $1}')
    [[ -z $missing ]] && return 0
    log "missing shared libraries: $missing"
    log "install them with: apt-get install libnl-3-200 libnl-genl-3-200 libglib2.0-0"
    return 1
}

if [[ ${1:-} != --force && -x $dest/usr/sbin/ksmbd.mountd && -f $dest/.deb-sha256 ]]; then
    check_libs "$dest" || exit 1
    log "cached: $dest ($(cat "$dest/.deb-name"))"
    echo "$dest"
    exit 0
fi

[[ -r $keyring ]] || die "missing $keyring (apt-get install debian-archive-keyring)"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "needs apt-get and dpkg (Debian)"

work=$(mktemp -d "${TMPDIR:-/tmp}/smbdd-ksmbd-tools.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/sources.list.d" "$work/deb"
echo "deb [signed-by=$keyring] $mirror bookworm-backports main" >"$work/sources.list"
# apt drops privileges to _apt for downloads; let it reach (mktemp made the folder 0700) and
# write where it downloads.
chmod 0755 "$work"
if id _apt >/dev/null 2>&1; then
    chown -R _apt "$work/lists" "$work/cache" "$work/deb"
fi
apt_private=(
    -o "Dir::Etc::SourceList=$work/sources.list"
    -o "Dir::Etc::SourceParts=$work/sources.list.d"
    -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Get::AllowUnauthenticated=false"
    -o "Acquire::AllowInsecureRepositories=false"
    -o "Acquire::Languages=none"
)
log "apt-get update (bookworm-backports only, private state in $work)"
apt-get "${apt_private[@]}" update -q >"$work/update.log" 2>&1 || {
    cat "$work/update.log" >&2; die "apt-get update failed"; }
# A failed signature check makes apt ignore the index and warn, not fail: treat that as fatal.
if grep -qiE 'NO_PUBKEY|not signed|BADSIG|is not valid|EXPKEYSIG' "$work/update.log"; then
    cat "$work/update.log" >&2; die "the bookworm-backports index did not verify against $keyring"
fi

# The exact Debian version string (e.g. 3.5.2-1~bpo12+1) of the upstream version asked for.
debver=$(apt-cache "${apt_private[@]}" madison ksmbd-tools |
         awk -F'|' -v v="$version" '{gsub(/ /, "", $2)} index($2, v "-") == 1 {print $2; exit}')
[[ -n $debver ]] || { apt-cache "${apt_private[@]}" madison ksmbd-tools >&2 || true
                      die "ksmbd-tools $version not found in bookworm-backports"; }
log "apt-get download ksmbd-tools=$debver"
(cd "$work/deb" && apt-get "${apt_private[@]}" download -q "ksmbd-tools=$debver" >"$work/download.log" 2>&1) || {
    cat "$work/download.log" >&2; die "apt-get download failed"; }
deb=$(ls "$work"/deb/ksmbd-tools_*.deb)

# apt has already compared the file with the signed index's SHA256; record it to show what ran.
expected=$(apt-cache "${apt_private[@]}" show "ksmbd-tools=$debver" | awk '/^SHA256:/ {print $2; exit}')
actual=$(sha256sum "$deb" | cut -d' ' -f1)
[[ $expected == "$actual" ]] || die "SHA256 of $deb ($actual) differs from the signed index ($expected)"

rm -rf "$dest.new"
mkdir -p "$dest.new"
dpkg -x "$deb" "$dest.new"
[[ -x $dest.new/usr/sbin/ksmbd.mountd ]] || die "$deb has no usr/sbin/ksmbd.mountd"
basename "$deb" >"$dest.new/.deb-name"
echo "$actual" >"$dest.new/.deb-sha256"
rm -rf "$dest"
mv "$dest.new" "$dest"
check_libs "$dest" || exit 1
log "unpacked $(cat "$dest/.deb-name") (sha256 $actual) into $dest"
echo "$dest"
