#define _GNU_SOURCE
#include "CBlockStorage.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <linux/falloc.h>
#include <linux/fs.h>

void cbs_io_set_eventfd(struct iocb *iocb, int eventfd) { io_set_eventfd(iocb, eventfd); }

void cbs_io_prep_preadv(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, int64_t offset) {
    io_prep_preadv(iocb, fd, iov, iovcnt, (long long)offset);
}

void cbs_io_prep_pwritev(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, int64_t offset) {
    io_prep_pwritev(iocb, fd, iov, iovcnt, (long long)offset);
}

int cbs_punch_hole(int fd, int64_t offset, int64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : errno;
}

int cbs_block_device_bytes(int fd, uint64_t *bytes) {
    return ioctl(fd, BLKGETSIZE64, bytes) == 0 ? 0 : errno;
}

int cbs_block_device_logical_block_size(int fd, uint32_t *size) {
    int s = 0;
    if (ioctl(fd, BLKSSZGET, &s) != 0) return errno;
    *size = (uint32_t)s;
    return 0;
}

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

int cbs_dio_alignment(int fd, uint32_t *mem_align, uint32_t *offset_align) {
    struct statx st;
    memset(&st, 0, sizeof st);
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) != 0) return errno;
    if (!(st.stx_mask & STATX_DIOALIGN) || st.stx_dio_offset_align == 0) return EOPNOTSUPP;
    *mem_align = st.stx_dio_mem_align;
    *offset_align = st.stx_dio_offset_align;
    return 0;
}

int cbs_is_on_tmpfs(const char *path) {
    struct statfs st;
    if (statfs(path, &st) != 0) return -1;
    return st.f_type == TMPFS_MAGIC ? 1 : 0;
}

int cbs_fdatasync(int fd) { return fdatasync(fd) == 0 ? 0 : errno; }

/* The head of the kernel's struct aio_ring (fs/aio.c), a stable ABI that libaio and fio
 * read too: events are at head..tail, the kernel advances tail, io_getevents head. */
struct cbs_aio_ring {
    unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
#define CBS_AIO_RING_MAGIC 0xa10a10a1

int cbs_aio_ring_has_events(io_context_t ctx) {
    const struct cbs_aio_ring *ring = (const struct cbs_aio_ring *)ctx;
    if (ring == NULL || ring->magic != CBS_AIO_RING_MAGIC) return 1;  /* unknown: ask io_getevents */
    return __atomic_load_n(&ring->head, __ATOMIC_RELAXED) != __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
}

int cbs_aio_ring_reap(io_context_t ctx, struct io_event *events, int max) {
    struct cbs_aio_ring *ring = (struct cbs_aio_ring *)ctx;
    if (ring == NULL) return -1;
    /* Each field of the shared header read once, and the copies checked: only the layout
     * this knows (events right after a header of this size, no feature that changes them). */
    unsigned nr = __atomic_load_n(&ring->nr, __ATOMIC_RELAXED);
    if (__atomic_load_n(&ring->magic, __ATOMIC_RELAXED) != CBS_AIO_RING_MAGIC ||
        __atomic_load_n(&ring->incompat_features, __ATOMIC_RELAXED) != 0 ||
        __atomic_load_n(&ring->header_length, __ATOMIC_RELAXED) != sizeof *ring || nr == 0) return -1;
    const struct io_event *ring_events = (const struct io_event *)(ring + 1);
    unsigned head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED) % nr;
    /* Acquiring: the kernel writes an event before the tail that covers it. */
    unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) % nr;
    int n = 0;
    while (n < max && head != tail) {
        events[n++] = ring_events[head];
        head = head + 1 == nr ? 0 : head + 1;
    }
    /* Releasing: the events are copied out before the kernel may reuse their slots. */
    if (n > 0) __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
    return n;
}
