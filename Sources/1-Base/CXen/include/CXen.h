/*
 * CXen: the single source of wire truth.
 *
 * Xen's public headers from libxen-dev, made usable from user space, plus a few
 * C shims for what Swift cannot import (GNU-only or variadic calls, macros).
 */
#ifndef CXEN_H
#define CXEN_H

/*
 * The latest interface version makes ring.h use the xen_mb/xen_rmb/xen_wmb
 * below instead of the kernel's mb()/rmb()/wmb(), which user space lacks.
 * x86-64 is TSO: loads are not reordered with loads nor stores with stores,
 * so rmb/wmb only need to stop the compiler; mb must order a store before a
 * later load and needs a real (sequentially consistent) fence.
 */
#ifndef __XEN_INTERFACE_VERSION__
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#endif
#ifndef xen_mb
#define xen_mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define xen_rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define xen_wmb() __atomic_thread_fence(__ATOMIC_RELEASE)
#endif

#include <stdint.h>
#include <time.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/epoll.h>
#include <spawn.h>

#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/io/ring.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/io/xs_wire.h>
#include <xen/io/xenbus.h>
#include <xen/io/protocols.h>

/* Constants Swift sees only as macros with casts or expressions. */
static const uint32_t cxen_page_size = 4096;
static const uint32_t cxen_sring_header_size = (uint32_t)offsetof(struct blkif_sring, ring);
static const uint16_t cxen_domid_self = DOMID_SELF;
static const uint16_t cxen_domid_first_reserved = DOMID_FIRST_RESERVED;

/* ---- system calls Swift's Glibc module does not expose ---- */

/* mremap(old, length, length, MREMAP_MAYMOVE | MREMAP_FIXED, target): moves a mapping's
   page tables to `target` without touching its pages (mremap is variadic, which Swift
   cannot call). 0, or -1 and errno. */
int cxen_mremap_fixed(void *old, size_t length, void *target);

/* memfd_create(name, MFD_CLOEXEC [| MFD_ALLOW_SEALING]); -1 and errno on failure. */
int cxen_memfd_create(const char *name, int allow_sealing);
/* eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK if nonblock). */
int cxen_eventfd(unsigned int initval, int nonblock);
/* FUTEX_WAIT on a word in shared memory (not _PRIVATE: other processes may
 * wake it). timeout_ns < 0 waits without a limit. Returns 0, or -1 and errno. */
int cxen_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
/* FUTEX_WAKE; returns the number woken, or -1 and errno. */
int cxen_futex_wake(uint32_t *word, int count);
/* Pins the calling thread to one CPU; returns 0 or an errno value. */
int cxen_pin_to_cpu(int cpu);
/* Nanoseconds on the monotonic clock (through the vDSO: no system call). */
static inline uint64_t cxen_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
/* Names the calling thread as ps, top -H and perf show it (the first 15 bytes);
 * returns 0 or an errno value. */
int cxen_name_thread(const char *name);
/* The x86 PAUSE hint (a compiler barrier elsewhere). */
static inline void cxen_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __asm__ __volatile__("pause" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}
/* O_DIRECT is behind _GNU_SOURCE. */
int cxen_o_direct(void);
/* SEEK_DATA and SEEK_HOLE too: lseek's next data and next hole at or after an offset. */
int cxen_seek_data(void);
int cxen_seek_hole(void);

/* ---- file descriptor passing over a Unix socket (SCM_RIGHTS) ---- */

/* Sends len bytes and up to nfds descriptors in one message. Returns bytes
 * sent or -1 and errno. */
ssize_t cxen_send_with_fds(int sock, const void *buf, size_t len,
                           const int *fds, int nfds);
/* Receives up to len bytes and up to max_fds descriptors (set CLOEXEC);
 * *nfds_out gets how many arrived. Returns bytes read, 0 at EOF, -1 and errno.
 * Descriptors beyond max_fds are closed, never leaked. */
ssize_t cxen_recv_with_fds(int sock, void *buf, size_t len,
                           int *fds, int max_fds, int *nfds_out);

/* SO_PEERCRED of a connected Unix socket (struct ucred is behind _GNU_SOURCE):
 * the pid, uid and gid of the peer when it connected. 0, or -1 and errno. */
int cxen_peer_credentials(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid);

/* posix_spawn_file_actions_addclosefrom_np (glibc 2.34, a GNU extension Swift does
 * not see): the spawned program gets no descriptor from 3 up. */
int cxen_spawn_close_from(posix_spawn_file_actions_t *actions, int from);

#endif
