#define _GNU_SOURCE
#include "CUringStorage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/falloc.h>
#include <liburing.h>

struct io_uring *cus_ring_open(unsigned entries, int sq_poll, unsigned sq_idle_ms, int *error) {
    struct io_uring *ring = calloc(1, sizeof *ring);
    if (ring == NULL) { *error = ENOMEM; return NULL; }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    /* SUBMIT_ALL: an entry that fails to issue completes with its error instead of
     * stopping the rest of the batch (Linux 5.18).
     * COOP_TASKRUN: a completion made elsewhere (an io-wq worker, an interrupt) is queued
     * as task work without an inter-processor interrupt to the submitting thread when it
     * runs (one IPI per completion, a trap to the hypervisor in a VM, was a fifth of the
     * CPU at queue depth 32 on tmpfs); the work runs at that thread's next system call,
     * or wakes it if it sleeps. TASKRUN_FLAG raises IORING_SQ_TASKRUN while such work
     * waits, so a thread that polls the completion ring knows to enter the kernel
     * (cus_taskrun_pending, cus_get_events). Linux 5.19. */
    p.flags = IORING_SETUP_SUBMIT_ALL;
    if (sq_poll) {
        p.flags |= IORING_SETUP_SQPOLL;
        p.sq_thread_idle = sq_idle_ms;
    } else {
        p.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    }
    int r = io_uring_queue_init_params(entries, ring, &p);
    if (r == -EINVAL) {  /* an older kernel without SUBMIT_ALL or COOP_TASKRUN */
        memset(&p, 0, sizeof p);
        if (sq_poll) { p.flags = IORING_SETUP_SQPOLL; p.sq_thread_idle = sq_idle_ms; }
        r = io_uring_queue_init_params(entries, ring, &p);
    }
    if (r < 0) { free(ring); *error = -r; return NULL; }
    *error = 0;
    return ring;
}

void cus_ring_close(struct io_uring *ring) {
    if (ring == NULL) return;
    io_uring_queue_exit(ring);
    free(ring);
}

int cus_ring_register_eventfd(struct io_uring *ring, int eventfd) {
    int r = io_uring_register_eventfd(ring, eventfd);
    return r < 0 ? -r : 0;
}

int cus_ring_register_buffer_slots(struct io_uring *ring, unsigned count) {
    int r = io_uring_register_buffers_sparse(ring, count);
    return r < 0 ? -r : 0;
}

int cus_ring_set_buffer(struct io_uring *ring, unsigned slot, void *base, size_t length) {
    struct iovec iov = { .iov_base = base, .iov_len = length };
    __u64 tag = 0;
    int r = io_uring_register_buffers_update_tag(ring, slot, &iov, &tag, 1);
    return r < 0 ? -r : 0;
}

/* A single buffer goes as IORING_OP_READ/WRITE: the kernel then skips importing an iovec array. */
int cus_prep_readv(struct io_uring *ring, int fd, const struct iovec *iov, unsigned count, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return EBUSY;
    if (count == 1) io_uring_prep_read(sqe, fd, iov[0].iov_base, (unsigned)iov[0].iov_len, offset);
    else io_uring_prep_readv(sqe, fd, iov, count, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cus_prep_writev(struct io_uring *ring, int fd, const struct iovec *iov, unsigned count, uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return EBUSY;
    if (count == 1) io_uring_prep_write(sqe, fd, iov[0].iov_base, (unsigned)iov[0].iov_len, offset);
    else io_uring_prep_writev(sqe, fd, iov, count, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cus_prep_read_fixed(struct io_uring *ring, int fd, void *buffer, unsigned length, uint64_t offset, int index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return EBUSY;
    io_uring_prep_read_fixed(sqe, fd, buffer, length, offset, index);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cus_prep_write_fixed(struct io_uring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, int index, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return EBUSY;
    io_uring_prep_write_fixed(sqe, fd, buffer, length, offset, index);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cus_prep_fdatasync(struct io_uring *ring, int fd, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return EBUSY;
    io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cus_prep_punch_hole(struct io_uring *ring, int fd, uint64_t offset, uint64_t length, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (sqe == NULL) return EBUSY;
    io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int cus_submit(struct io_uring *ring) { return io_uring_submit(ring); }

unsigned cus_sq_unsubmitted(struct io_uring *ring) { return io_uring_sq_ready(ring); }

unsigned cus_cq_ready(struct io_uring *ring) { return io_uring_cq_ready(ring); }

unsigned cus_reap(struct io_uring *ring, cus_completion *out, unsigned max) {
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (n == max) break;
        out[n].user_data = io_uring_cqe_get_data64(cqe);
        out[n].result = cqe->res;
        n++;
    }
    if (n > 0) io_uring_cq_advance(ring, n);
    return n;
}

int cus_get_events(struct io_uring *ring) { return io_uring_get_events(ring); }

int cus_coop_taskrun(struct io_uring *ring) { return (ring->flags & IORING_SETUP_COOP_TASKRUN) != 0; }

int cus_taskrun_pending(struct io_uring *ring) {
    return (IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN) != 0;
}

int cus_probe(void) {
    struct io_uring ring;
    int r = io_uring_queue_init(2, &ring, 0);
    if (r < 0) return -r;
    io_uring_queue_exit(&ring);
    return 0;
}
