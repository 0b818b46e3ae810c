# shellcheck shell=bash
# Shared helpers for building single kernel modules (cifs.ko, ksmbd.ko) out of tree from Debian's
# linux-source tarball against the matching linux-headers package.  Sourced, not executed.
#
# Why a private "objtree": the SPNEGO .asn1 files are compiled by kbuild with
# $(objtree)/scripts/asn1_compiler, a host tool that linux-headers does not ship.  Rather than
# writing into /usr/src, we build the tool ourselves and give kbuild a copy of the (small) headers
# build directory whose scripts/ holds it next to symlinks to Debian's kbuild scripts.

set -euo pipefail

LAB_KVER=${SMBDD_LAB_KVER:-6.1.0-56-amd64}
LAB_CACHE=${SMBDD_CACHE:-/var/cache/smbdd}
LAB_SRC_TARBALL=${SMBDD_LAB_SRC:-/usr/src/linux-source-6.1.tar.xz}
LAB_HEADERS=/usr/src/linux-headers-$LAB_KVER

lab_log() { printf '[kbuild %s] %s\n' "$(date +%T)" "$*" >&2; }
lab_die() { lab_log "ERROR: $*"; exit 1; }

# lab_replace_once FILE WHAT <<'PATCH': the heredoc holds the code to find, a line
# "--- becomes ---", then its replacement. FILE must hold that code exactly once, so that a
# source where it changed stops the build instead of silently going without the fix.
lab_replace_once() {
    local recipe=${BASH_SOURCE[1]:-the recipe}
    python3 -c '
import sys
path, what, recipe = sys.argv[1:]
old, sep, new = sys.stdin.read().partition("\n--- becomes ---\n")
if not sep:
    sys.exit(f"{recipe}: the patch of {what} has no --- becomes --- line")
old += "\n"
src = open(path).read()
if src.count(old) != 1:
    sys.exit(f"{what} not found as expected in {path}: update {recipe}")
open(path, "w").write(src.replace(old, new))
' "$1" "$2" "${recipe##*/}"
}

lab_check_inputs() {
    [[ -r $LAB_SRC_TARBALL ]] || lab_die "missing $LAB_SRC_TARBALL (apt-get install linux-source-6.1)"
    [[ -d $LAB_HEADERS ]] || lab_die "missing $LAB_HEADERS (apt-get install linux-headers-$LAB_KVER)"
    command -v gcc >/dev/null && command -v make >/dev/null || lab_die "need gcc and make"
}

# A cache key that changes whenever anything that shapes the module changes: kernel headers,
# source package version, the build recipe (these scripts) and any patch applied.
lab_cache_key() {  # lab_cache_key EXTRA...
    local srcver hdrver
    srcver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || stat -c %s.%Y "$LAB_SRC_TARBALL")
    hdrver=$(dpkg-query -W -f='${Version}' "linux-headers-$LAB_KVER" 2>/dev/null || echo unknown)
    {
        echo "kver=$LAB_KVER src=$srcver hdr=$hdrver"
        sha256sum "$LAB_HEADERS/Module.symvers" | cut -d' ' -f1
        cat "${BASH_SOURCE[0]}"
        printf '%s\n' "$@"
    } | sha256sum | cut -d' ' -f1
}

# lab_extract WORKDIR PATH... : extract only the named paths of the source tree (xz must still
# decompress the whole stream: about 10 s).
lab_extract() {
    local work=$1; shift
    local top
    top=$(tar -tJf "$LAB_SRC_TARBALL" 2>/dev/null | head -1 | cut -d/ -f1) || true
    [[ -n $top ]] || top=linux-source-6.1
    local members=()
    for p in "$@"; do members+=("$top/$p"); done
    tar -xJf "$LAB_SRC_TARBALL" -C "$work" "${members[@]}"
    mv "$work/$top" "$work/src"
}

# lab_make_objtree WORKDIR : private copy of the headers build dir with our asn1_compiler.
lab_make_objtree() {
    local work=$1 obj=$1/objtree
    cp -a "$LAB_HEADERS" "$obj"
    # Debian's build dir links scripts/ and tools/ relatively (../../lib/linux-kbuild-6.1/...):
    # re-point every top-level link at its absolute target so the copy works from anywhere.
    local link
    for link in "$obj"/*; do
        [[ -L $link ]] && ln -sfn "$(readlink -f "$LAB_HEADERS/${link##*/}")" "$link"
    done
    local scripts
    scripts=$(readlink -f "$LAB_HEADERS/scripts")
    rm -f "$obj/scripts"
    mkdir "$obj/scripts"
    ln -s "$scripts"/* "$obj/scripts/"
    # asn1_compiler.c needs linux/asn1.h and linux/asn1_ber_bytecode.h: the common headers
    # package (what $LAB_HEADERS/Makefile includes) ships both.
    local inc
    inc=$(sed -n 's|^include \(.*\)/Makefile$|\1|p' "$LAB_HEADERS/Makefile")/include
    [[ -f $inc/linux/asn1_ber_bytecode.h ]] || lab_die "no linux/asn1_ber_bytecode.h under $inc"
    gcc -O2 -I"$inc" -o "$obj/scripts/asn1_compiler" "$work/src/scripts/asn1_compiler.c"
    [[ -x $obj/scripts/asn1_compiler ]] || lab_die "asn1_compiler build failed"
}

# lab_kmake WORKDIR SUBDIR VAR=VALUE... : build the modules of one source subdirectory.
lab_kmake() {
    local work=$1 sub=$2; shift 2
    make -s -C "$work/objtree" M="$work/src/$sub" -j"$(nproc)" "$@" modules
}

# lab_install_cached WORKDIR SUBDIR MODULE DESTDIR KEY : strip and atomically place MODULE.
lab_install_cached() {
    local work=$1 sub=$2 mod=$3 dest=$4 key=$5
    local built=$work/src/$sub/$mod
    [[ -f $built ]] || lab_die "build produced no $built"
    strip --strip-debug "$built"
    mkdir -p "$dest"
    cp "$built" "$dest/$mod.tmp"
    mv "$dest/$mod.tmp" "$dest/$mod"
    echo "$key" >"$dest/$mod.key"
}
