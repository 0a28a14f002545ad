/*
 * CUringStorage: the io_uring calls UringStorage makes, over liburing. liburing's ring
 * structures and static inline helpers (memory barriers on shared ring indices) stay
 * in C; Swift sees an opaque ring and plain functions.
 */
#ifndef CURINGSTORAGE_H
#define CURINGSTORAGE_H

#include <stdint.h>
#include <sys/uio.h>

struct io_uring;

/* One completion queue entry, copied out: the submitter's value and the result
 * (bytes moved, 0, or a negative errno). */
typedef struct cus_completion {
    uint64_t user_data;
    int32_t result;
} cus_completion;

/* A ring of at least `entries` submission entries (and twice as many completions).
 * `sq_poll`: a kernel thread polls the submission queue, idling after `sq_idle_ms`.
 * NULL with *error set to a positive errno on failure. */
struct io_uring *cus_ring_open(unsigned entries, int sq_poll, unsigned sq_idle_ms, int *error);
void cus_ring_close(struct io_uring *ring);
/* The kernel signals `eventfd` for each completion it posts. 0 or a positive errno. */
int cus_ring_register_eventfd(struct io_uring *ring, int eventfd);
/* A table of `count` empty registered-buffer slots (IORING_OP_READ_FIXED / WRITE_FIXED
 * name a slot; Linux 5.19). 0 or a positive errno. */
int cus_ring_register_buffer_slots(struct io_uring *ring, unsigned count);
/* Slot `slot` holds [base, base + length) from now on, pinned by the kernel; base NULL and
 * length 0 empty it (the kernel unpins once no operation uses it). 0 or a positive errno. */
int cus_ring_set_buffer(struct io_uring *ring, unsigned slot, void *base, size_t length);

/* Queue one operation in the submission ring (not yet handed to the kernel).
 * 0, or EBUSY when the submission ring is full. */
int cus_prep_readv(struct io_uring *ring, int fd, const struct iovec *iov, unsigned count, uint64_t offset, uint64_t user_data);
int cus_prep_writev(struct io_uring *ring, int fd, const struct iovec *iov, unsigned count, uint64_t offset, uint64_t user_data);
/* A single buffer inside registered buffer `index`. */
int cus_prep_read_fixed(struct io_uring *ring, int fd, void *buffer, unsigned length, uint64_t offset, int index, uint64_t user_data);
int cus_prep_write_fixed(struct io_uring *ring, int fd, const void *buffer, unsigned length, uint64_t offset, int index, uint64_t user_data);
/* IORING_OP_FSYNC with IORING_FSYNC_DATASYNC. */
int cus_prep_fdatasync(struct io_uring *ring, int fd, uint64_t user_data);
/* IORING_OP_FALLOCATE with FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE. */
int cus_prep_punch_hole(struct io_uring *ring, int fd, uint64_t offset, uint64_t length, uint64_t user_data);

/* io_uring_submit: the number of entries the kernel took, or a negative errno. */
int cus_submit(struct io_uring *ring);
/* Entries queued that the kernel has not taken yet. */
unsigned cus_sq_unsubmitted(struct io_uring *ring);
/* Completions waiting in the completion ring: shared memory, no system call. */
unsigned cus_cq_ready(struct io_uring *ring);
/* Copies up to `max` completions out of the ring and releases their entries. No system call. */
unsigned cus_reap(struct io_uring *ring, cus_completion *out, unsigned max);
/* Enters the kernel to run pending completion work (io_uring_get_events). */
int cus_get_events(struct io_uring *ring);
/* Whether completion work waits for this thread to enter the kernel (IORING_SQ_TASKRUN,
 * set by rings made with IORING_SETUP_TASKRUN_FLAG): shared memory, no system call. */
int cus_taskrun_pending(struct io_uring *ring);
/* Whether the ring was set up with IORING_SETUP_COOP_TASKRUN (Linux 5.19). */
int cus_coop_taskrun(struct io_uring *ring);

/* Whether this kernel lets the process set up a ring: 0 or a positive errno
 * (ENOSYS: no io_uring; EPERM: kernel.io_uring_disabled or a seccomp filter). */
int cus_probe(void);

#endif
