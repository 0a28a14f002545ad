/*
 * CBlockStorage: the few system calls the storage engines need that Swift cannot
 * import as they are (GNU-only flags, ioctl numbers built by macros, statx fields
 * newer than the C library's headers, libaio's static inline eventfd setter).
 */
#ifndef CBLOCKSTORAGE_H
#define CBLOCKSTORAGE_H

#include <stdint.h>
#include <libaio.h>
#include <sys/uio.h>

/* UIO_MAXIOV (IOV_MAX): the most iovecs one preadv/pwritev (or PREADV/PWRITEV iocb) takes. */
static const int cbs_iov_max = UIO_MAXIOV;

/* Ask the kernel to signal `eventfd` (+1) when this iocb completes (IOCB_FLAG_RESFD). */
void cbs_io_set_eventfd(struct iocb *iocb, int eventfd);
/* Prepares IO_CMD_PREADV / IO_CMD_PWRITEV. */
void cbs_io_prep_preadv(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, int64_t offset);
void cbs_io_prep_pwritev(struct iocb *iocb, int fd, const struct iovec *iov, int iovcnt, int64_t offset);
/* fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). Returns 0 or an errno value. */
int cbs_punch_hole(int fd, int64_t offset, int64_t length);
/* BLKGETSIZE64 on a block device. Returns 0 or an errno value. */
int cbs_block_device_bytes(int fd, uint64_t *bytes);
/* BLKSSZGET: the logical block size of a block device. Returns 0 or an errno value. */
int cbs_block_device_logical_block_size(int fd, uint32_t *size);
/* statx(STATX_DIOALIGN): O_DIRECT memory and offset alignment of a file; 0 or an errno
 * value (EOPNOTSUPP when the kernel or file system does not report it). */
int cbs_dio_alignment(int fd, uint32_t *mem_align, uint32_t *offset_align);
/* Whether `path` lies on tmpfs (statfs f_type TMPFS_MAGIC): 1 or 0, or -1 when statfs fails. */
int cbs_is_on_tmpfs(const char *path);
/* fdatasync; returns 0 or an errno value. */
int cbs_fdatasync(int fd);
/* Whether the context's completion ring (the kernel's struct aio_ring, mapped at the
 * context's address, as libaio's own io_getevents reads it) holds events: no system
 * call. 1 when the ring is not one this recognises: then io_getevents must tell. */
int cbs_aio_ring_has_events(io_context_t ctx);
/* Moves up to `max` events out of that ring into `events` and advances its head, as
 * io_getevents does in the kernel, without a system call (the kernel reads the head back
 * to reuse the slots): the count taken, or -1 when the ring is not one this recognises. */
int cbs_aio_ring_reap(io_context_t ctx, struct io_event *events, int max);

#endif
