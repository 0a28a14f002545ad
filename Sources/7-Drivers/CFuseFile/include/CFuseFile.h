/*
 * CFuseFile: one file, a block device, in a FUSE mount, over libfuse3's low-level API.
 * libfuse's structures (fuse_file_info's bit fields, the reply calls) stay in C; Swift
 * gives four callbacks and sees an opaque handle.
 *
 * The callbacks run on libfuse's worker threads and may block there. They see only
 * requests inside the device whose offset and length are multiples of the sector size:
 * this file widens unaligned reads and turns unaligned writes into read-modify-write
 * (serialised against every other write).
 *
 * Aligned reads and writes, the common case, are asynchronous when the device gives
 * `read_async`/`write_async`: the worker hands the request over and goes back to the
 * kernel's queue, and the device answers it later, from any thread, with one of the
 * cfuse_request_reply_* calls. So the device sees as many requests at once as programs
 * have in flight, not one per worker.
 */
#ifndef CFUSEFILE_H
#define CFUSEFILE_H

#include <stddef.h>
#include <stdint.h>

/* A request handed to the device to answer later: exactly one cfuse_request_reply_* call
 * answers and frees it. */
struct cfuse_request;

/* The blocking calls return 0 or a negative errno each. The asynchronous ones (may be NULL:
 * then the blocking ones serve every request) return at once; `data` is valid only until
 * write_async returns. */
typedef struct cfuse_device_ops {
    void *context;
    int (*read)(void *context, uint64_t offset, void *buffer, size_t length);
    int (*write)(void *context, uint64_t offset, const void *buffer, size_t length);
    int (*flush)(void *context);
    int (*discard)(void *context, uint64_t offset, uint64_t length);
    void (*read_async)(void *context, struct cfuse_request *request, uint64_t offset, size_t length);
    void (*write_async)(void *context, struct cfuse_request *request, uint64_t offset, const void *data, size_t length);
} cfuse_device_ops;

/* Answers a read_async request with `length` bytes of `data` (copied before it returns). */
void cfuse_request_reply_read(struct cfuse_request *request, const void *data, size_t length);
/* Answers a write_async request: all of it written. */
void cfuse_request_reply_write(struct cfuse_request *request);
/* Answers either with an error (a positive errno). */
void cfuse_request_reply_error(struct cfuse_request *request, int error);

typedef struct cfuse_file_config {
    const char *name;       /* the file's name in the mount's root */
    uint64_t size;          /* bytes */
    uint32_t sector_size;   /* a power of two, at least 512 */
    int read_only;
    int can_flush;
    int can_discard;        /* a discarded range reads back as zeros */
    unsigned max_threads;   /* libfuse worker threads */
} cfuse_file_config;

struct cfuse_file;

/* Mounts an empty directory `mountpoint` (which must exist) and prepares the session.
 * NULL with *error set to a positive errno (EINVAL for a bad config or FUSE's refusal). */
struct cfuse_file *cfuse_file_mount(const char *mountpoint, const cfuse_file_config *config,
                                    const cfuse_device_ops *ops, int *error);
/* Serves requests until the mount goes away (umount, cfuse_file_stop): 0 or a negative errno. */
int cfuse_file_run(struct cfuse_file *file);
/* Asks the loop to end and detaches the mount; any thread, any number of times. */
void cfuse_file_stop(struct cfuse_file *file);
/* Unmounts (if still mounted) and frees, after cfuse_file_run returned; first waits until
 * every asynchronous request has been answered. */
void cfuse_file_destroy(struct cfuse_file *file);

#endif
