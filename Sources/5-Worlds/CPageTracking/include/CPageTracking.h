// Write tracking of a process's memory for log-dirty: userfaultfd
// write-protect in asynchronous mode and the PAGEMAP_SCAN ioctl of
// /proc/PID/pagemap (Linux 6.7 and later). Kept in C because the ioctl
// numbers are macros and this system's uapi headers predate both.
#ifndef CPAGETRACKING_H
#define CPAGETRACKING_H

#include <stdint.h>

/// One run of written pages reported by a scan: [start, end) in the scanned
/// process's addresses (the kernel's `struct page_region`).
typedef struct cpt_region {
    uint64_t start;
    uint64_t end;
    uint64_t categories;
} cpt_region;

/// A userfaultfd of the calling process in asynchronous write-protect mode
/// (UFFD_FEATURE_WP_ASYNC, shmem and unpopulated pages included), close-on-exec
/// and non-blocking. Returns the descriptor or -errno. Only this process's
/// writes are tracked through it, whoever holds the descriptor later.
///
/// With `remap_events` it also asks for UFFD_FEATURE_EVENT_REMAP. Without it, an
/// mremap of a registered range drops the registration and must clear the
/// protection entry by entry (Linux 6.13+), ~1 ms per 256 MiB populated; with it,
/// whole page-table pages move and the range stays registered, but each such
/// mremap then waits until someone reads its event (`cpt_uffd_drain_events`).
int cpt_uffd_open(int remap_events);

/// Reads and drops the event messages of `uffd` (non-blocking) until `stop`
/// becomes readable; the caller runs it on a thread of its own while it mremaps
/// ranges registered with a descriptor that asked for remap events. Returns the
/// messages read, or -errno when polling failed.
long cpt_uffd_drain_events(int uffd, int stop);

/// Registers [start, start+length) of the descriptor's process for write
/// protection and protects it: from now on a write to a page there makes it
/// "written" until the next scan re-protects it. Returns 0 or -errno.
int cpt_uffd_register(int uffd, uint64_t start, uint64_t length);

/// Unregisters [start, start+length), dropping its protection. 0 or -errno.
int cpt_uffd_unregister(int uffd, uint64_t start, uint64_t length);

/// One PAGEMAP_SCAN of [start, end) on `pagemap` (/proc/PID/pagemap of the
/// tracked process): fills `vec` with runs of pages written since they were
/// last protected and protects them again (PM_SCAN_WP_MATCHING). Returns the
/// runs filled, or -errno; `*walk_end` is where the walk stopped (below
/// `end` when `vec` filled up: scan again from there).
long cpt_scan_written(int pagemap, uint64_t start, uint64_t end, cpt_region *vec, uint64_t vec_len, uint64_t *walk_end);

#endif
