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
lab_replace_once "$smbdirect" "smbd_send() page loop" <<'PATCH'
size = min_t(unsigned int, max_iov_size, remaining_data_length);
--- becomes ---
size = min_t(unsigned int, min_t(unsigned int, max_iov_size, buflen - j * max_iov_size), remaining_data_length);
PATCH
lab_log "patched smbd_send() page-piece bound"
# Linux 6.1's smbd_post_send_data() turns each kvec of a request into a scatterlist entry with
# sg_set_buf(), i.e. virt_to_page(), which is only valid for linear-map (kmalloc) addresses. A
# compound request whose member is not 8-byte aligned gets a padding kvec that points at the
# module global smb2_padding[] (smb2_set_next_command() in smb2ops.c): an address in the module
# area, for which virt_to_page() yields a page that is not the one holding smb2_padding. On a
# real RNIC that DMAs 1-7 bytes from the wrong physical page; on rxe (which DMAs through kernel
# virtual addresses) it memcpy()s from __va() of that bogus page, and when KASLR puts it outside
# RAM the guest dies in softirq context (seen in the lab, vers=3.0, rename of "renamed-3.0.bin":
# a SET_INFO of 148 bytes + 4 padding bytes):
#   BUG: unable to handle page fault ... RIP: memcpy_erms, rxe_mr_copy (DMA MR path, 4 bytes)
#   <- copy_data <- rxe_requester; Kernel panic - not syncing: Fatal exception in interrupt
# Linux 6.3 replaced this code with an iov_iter walk that maps vmalloc/module addresses with
# vmalloc_to_page(), page by page; the lab does the same here.
lab_replace_once "$smbdirect" "smbd_post_send_data() sg loop" <<'PATCH'
	struct scatterlist sgl[SMBDIRECT_MAX_SEND_SGE - 1];

	if (n_vec > SMBDIRECT_MAX_SEND_SGE - 1) {
		cifs_dbg(VFS, "Can't fit data to SGL, n_vec=%d\n", n_vec);
		return -EINVAL;
	}

	sg_init_table(sgl, n_vec);
	for (i = 0; i < n_vec; i++) {
		data_length += iov[i].iov_len;
		sg_set_buf(&sgl[i], iov[i].iov_base, iov[i].iov_len);
	}

	return smbd_post_send_sgl(info, sgl, data_length, remaining_data_length);
--- becomes ---
	struct scatterlist sgl[SMBDIRECT_MAX_SEND_SGE - 1];
	int nents = 0;

	if (n_vec > SMBDIRECT_MAX_SEND_SGE - 1) {
		cifs_dbg(VFS, "Can't fit data to SGL, n_vec=%d\n", n_vec);
		return -EINVAL;
	}

	/* lab patch: kvecs outside the linear map (smb2_padding in the module's data) are
	 * mapped page by page with vmalloc_to_page(); virt_to_page() is wrong for them. */
	sg_init_table(sgl, ARRAY_SIZE(sgl));
	for (i = 0; i < n_vec; i++) {
		const char *p = iov[i].iov_base;
		size_t left = iov[i].iov_len;

		data_length += left;
		if (!left)
			continue;
		if (virt_addr_valid(p)) {
			if (nents == ARRAY_SIZE(sgl))
				goto too_many;
			sg_set_buf(&sgl[nents++], p, left);
			continue;
		}
		while (left) {
			size_t n = min_t(size_t, left, PAGE_SIZE - offset_in_page(p));
			struct page *page = vmalloc_to_page(p);

			if (!page) {
				cifs_dbg(VFS, "kvec %px is not mapped\n", p);
				return -EINVAL;
			}
			if (nents == ARRAY_SIZE(sgl))
				goto too_many;
			sg_set_page(&sgl[nents++], page, n, offset_in_page(p));
			p += n;
			left -= n;
		}
	}
	if (!nents)
		return smbd_post_send_sgl(info, NULL, 0, remaining_data_length);
	sg_mark_end(&sgl[nents - 1]);
	return smbd_post_send_sgl(info, sgl, data_length, remaining_data_length);

too_many:
	cifs_dbg(VFS, "Can't fit data to SGL, n_vec=%d\n", n_vec);
	return -EINVAL;
PATCH
lab_replace_once "$smbdirect" "the highmem.h include" <<'PATCH'
#include <linux/highmem.h>
--- becomes ---
#include <linux/highmem.h>
#include <linux/vmalloc.h>
PATCH
lab_log "patched smbd_post_send_data() for kvecs outside the linear map"
# Linux 6.1's smbd_destroy() waits for the DISCONNECTED event with wait_event_interruptible(),
# but it runs in the cifsd thread, which cifs_put_tcp_session() has just sent SIGKILL: the wait
# returns at once and the transport can still read SMBD_CONNECTED. ib_drain_qp() then flushes
# the posted receives, each flush queues post_send_credits_work again (after the
# cancel_work_sync() meant to stop it), and that work, seeing "connected", posts a receive on
# the QP that rdma_destroy_qp() has just freed. Seen in the lab on a plain umount, about one
# run in two under CI load:
#   BUG: kernel NULL pointer dereference ... Workqueue: smbd_... smbd_post_send_credits [cifs]
#   RIP: smbd_post_recv
# after which every later mount hangs. Upstream fixed it in 2025 ("smb: client: let
# smbd_destroy() call disable_work_sync(&info->post_send_credits_work)", also found on rxe);
# 6.1 has no disable_work_sync(), so the lab marks the transport as going down before the
# cancel, which makes every later run of the work return without posting.
lab_replace_once "$smbdirect" "smbd_destroy() cancel of post_send_credits_work" <<'PATCH'
	log_rdma_event(INFO, "cancelling post_send_credits_work\n");
	cancel_work_sync(&info->post_send_credits_work);
--- becomes ---
	/* lab patch: a killed waiter leaves the status "connected"; no receive may be posted
	 * from here on, and smbd_post_send_credits() posts only while connected. */
	if (info->transport_status == SMBD_CONNECTED)
		info->transport_status = SMBD_DISCONNECTING;
	log_rdma_event(INFO, "cancelling post_send_credits_work\n");
	cancel_work_sync(&info->post_send_credits_work);
PATCH
lab_log "patched smbd_destroy() so no receive is posted after the QP is gone"
lab_make_objtree "$work"
lab_log "building cifs.ko (SMB Direct) against $LAB_HEADERS"
# CONFIG_CIFS_SMB_DIRECT=y selects smbdirect.o in the Makefile; the -D makes the #ifdefs in the
# C sources see it, since the headers' autoconf.h was generated without it.
lab_kmake "$work" fs/smb/client CONFIG_CIFS=m CONFIG_CIFS_SMB_DIRECT=y \
    KCFLAGS=-DCONFIG_CIFS_SMB_DIRECT=1
lab_install_cached "$work" fs/smb/client cifs.ko "$dest" "$key"
lab_log "built $dest/cifs.ko ($(stat -c %s "$dest/cifs.ko") bytes) in $(awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN{printf "%.1f", a-b}') s"
echo "$dest/cifs.ko"
