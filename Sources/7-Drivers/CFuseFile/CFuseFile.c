#define _GNU_SOURCE
#define FUSE_USE_VERSION 312
#include "CFuseFile.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#define ROOT_INO FUSE_ROOT_ID
#define FILE_INO 2
/* Nothing in the mount ever changes its shape: the kernel may cache names and sizes. */
#define TIMEOUT 3600.0

struct cfuse_file {
    struct fuse_session *session;
    cfuse_file_config config;
    cfuse_device_ops ops;
    char *name;
    char *mountpoint;
    /* The write gate: aligned writes share it, a read-modify-write holds it alone, so no
     * write lands between its read and its write. Not a pthread rwlock: an asynchronous
     * write leaves it on whatever thread answers it. */
    pthread_mutex_t gate;
    pthread_cond_t gate_changed;
    unsigned shared_writes;
    int exclusive;
    /* Asynchronous requests handed out and not yet answered: the session outlives them. */
    unsigned pending;
    pthread_mutex_t stop_lock;
    int stopped;
};

struct cfuse_request {
    fuse_req_t req;
    struct cfuse_file *file;
    size_t length;      /* what a write answers it wrote: cut to the disk already */
    int holds_shared;
};

static struct cfuse_file *file_of(fuse_req_t req) { return fuse_req_userdata(req); }

static void shared_enter(struct cfuse_file *f) {
    pthread_mutex_lock(&f->gate);
    while (f->exclusive) pthread_cond_wait(&f->gate_changed, &f->gate);
    f->shared_writes++;
    pthread_mutex_unlock(&f->gate);
}

static void shared_leave(struct cfuse_file *f) {
    pthread_mutex_lock(&f->gate);
    if (--f->shared_writes == 0) pthread_cond_broadcast(&f->gate_changed);
    pthread_mutex_unlock(&f->gate);
}

/* Waits for other exclusive holders, then keeps new aligned writes out and waits for
 * those in flight (the device finishes them without a worker, so this ends). */
static void exclusive_enter(struct cfuse_file *f) {
    pthread_mutex_lock(&f->gate);
    while (f->exclusive) pthread_cond_wait(&f->gate_changed, &f->gate);
    f->exclusive = 1;
    while (f->shared_writes) pthread_cond_wait(&f->gate_changed, &f->gate);
    pthread_mutex_unlock(&f->gate);
}

static void exclusive_leave(struct cfuse_file *f) {
    pthread_mutex_lock(&f->gate);
    f->exclusive = 0;
    pthread_cond_broadcast(&f->gate_changed);
    pthread_mutex_unlock(&f->gate);
}

static struct cfuse_request *request_new(struct cfuse_file *f, fuse_req_t req, size_t length, int holds_shared) {
    struct cfuse_request *r = malloc(sizeof *r);
    if (!r) return NULL;
    r->req = req;
    r->file = f;
    r->length = length;
    r->holds_shared = holds_shared;
    pthread_mutex_lock(&f->gate);
    f->pending++;
    pthread_mutex_unlock(&f->gate);
    return r;
}

/* After the reply: lets go of the gate and of the session. */
static void request_done(struct cfuse_request *r) {
    struct cfuse_file *f = r->file;
    if (r->holds_shared) shared_leave(f);
    pthread_mutex_lock(&f->gate);
    if (--f->pending == 0) pthread_cond_broadcast(&f->gate_changed);
    pthread_mutex_unlock(&f->gate);
    free(r);
}

void cfuse_request_reply_read(struct cfuse_request *r, const void *data, size_t length) {
    fuse_reply_buf(r->req, data, length);
    request_done(r);
}

void cfuse_request_reply_write(struct cfuse_request *r) {
    fuse_reply_write(r->req, r->length);
    request_done(r);
}

void cfuse_request_reply_error(struct cfuse_request *r, int error) {
    fuse_reply_err(r->req, error);
    request_done(r);
}

static void fill_stat(const struct cfuse_file *f, fuse_ino_t ino, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_uid = 0;
    st->st_gid = 0;
    if (ino == ROOT_INO) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else {
        st->st_mode = S_IFREG | (f->config.read_only ? 0400 : 0600);
        st->st_nlink = 1;
        st->st_size = (off_t)f->config.size;
        st->st_blksize = 4096;
        st->st_blocks = (blkcnt_t)(f->config.size / 512);
    }
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    struct cfuse_file *f = file_of(req);
    if (parent != ROOT_INO || strcmp(name, f->name) != 0) { fuse_reply_err(req, ENOENT); return; }
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = FILE_INO;
    e.attr_timeout = TIMEOUT;
    e.entry_timeout = TIMEOUT;
    fill_stat(f, FILE_INO, &e.attr);
    fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    if (ino != ROOT_INO && ino != FILE_INO) { fuse_reply_err(req, ENOENT); return; }
    struct stat st;
    fill_stat(file_of(req), ino, &st);
    fuse_reply_attr(req, &st, TIMEOUT);
}

/* The size is the disk's: a change of it is refused (EPERM), anything else (times, mode)
 * is accepted and forgotten. */
static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
    struct cfuse_file *f = file_of(req);
    (void)fi;
    if (ino != ROOT_INO && ino != FILE_INO) { fuse_reply_err(req, ENOENT); return; }
    if ((to_set & FUSE_SET_ATTR_SIZE) && (ino != FILE_INO || (uint64_t)attr->st_size != f->config.size)) {
        fuse_reply_err(req, f->config.read_only ? EROFS : EPERM);
        return;
    }
    struct stat st;
    fill_stat(f, ino, &st);
    fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    struct cfuse_file *f = file_of(req);
    (void)fi;
    if (ino != ROOT_INO) { fuse_reply_err(req, ENOTDIR); return; }
    char buf[1024];
    size_t used = 0;
    const char *names[3] = {".", "..", f->name};
    fuse_ino_t inos[3] = {ROOT_INO, ROOT_INO, FILE_INO};
    for (off_t i = off; i < 3; i++) {
        struct stat st;
        memset(&st, 0, sizeof st);
        st.st_ino = inos[i];
        st.st_mode = i == 2 ? S_IFREG : S_IFDIR;
        size_t room = size < sizeof buf ? size : sizeof buf;
        size_t need = fuse_add_direntry(req, buf + used, room > used ? room - used : 0, names[i], &st, i + 1);
        if (used + need > room) break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct cfuse_file *f = file_of(req);
    if (ino != FILE_INO) { fuse_reply_err(req, EISDIR); return; }
    if (f->config.read_only && (fi->flags & O_ACCMODE) != O_RDONLY) { fuse_reply_err(req, EROFS); return; }
    /* Every read and write reaches the device: no page cache between a program and the vbd. */
    fi->direct_io = 1;
    fi->keep_cache = 0;
    fuse_reply_open(req, fi);
}

static uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

static int aligned(const struct cfuse_file *f, uint64_t offset, uint64_t length) {
    uint64_t sector = f->config.sector_size;
    return offset % sector == 0 && length % sector == 0;
}

/* Reads [offset, offset+length) (inside the disk) into `out`, widening to sectors if needed. */
static int read_range(struct cfuse_file *f, uint64_t offset, char *out, size_t length) {
    uint64_t sector = f->config.sector_size;
    uint64_t start = align_down(offset, sector), end = align_up(offset + length, sector);
    if (start == offset && end == offset + length) return f->ops.read(f->ops.context, offset, out, length);
    char *bounce = aligned_alloc(4096, align_up(end - start, 4096));
    if (!bounce) return -ENOMEM;
    int r = f->ops.read(f->ops.context, start, bounce, end - start);
    if (r == 0) memcpy(out, bounce + (offset - start), length);
    free(bounce);
    return r;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    struct cfuse_file *f = file_of(req);
    (void)fi;
    if (ino != FILE_INO) { fuse_reply_err(req, EISDIR); return; }
    if (off < 0) { fuse_reply_err(req, EINVAL); return; }
    uint64_t offset = (uint64_t)off;
    if (offset >= f->config.size || size == 0) { fuse_reply_buf(req, NULL, 0); return; }
    size_t length = size;
    if (length > f->config.size - offset) length = (size_t)(f->config.size - offset);
    if (f->ops.read_async && aligned(f, offset, length)) {
        struct cfuse_request *r = request_new(f, req, length, 0);
        if (!r) { fuse_reply_err(req, ENOMEM); return; }
        f->ops.read_async(f->ops.context, r, offset, length);
        return;
    }
    char *buf = aligned_alloc(4096, align_up(length, 4096));
    if (!buf) { fuse_reply_err(req, ENOMEM); return; }
    int r = read_range(f, offset, buf, length);
    if (r < 0) fuse_reply_err(req, -r);
    else fuse_reply_buf(req, buf, length);
    free(buf);
}

/* Writes `length` bytes at `offset` (inside the disk); the caller holds `writes` alone if
 * the range is not whole sectors. */
static int write_range(struct cfuse_file *f, uint64_t offset, const char *data, size_t length) {
    uint64_t sector = f->config.sector_size;
    uint64_t start = align_down(offset, sector), end = align_up(offset + length, sector);
    if (start == offset && end == offset + length) return f->ops.write(f->ops.context, offset, data, length);
    size_t span = (size_t)(end - start);
    char *bounce = aligned_alloc(4096, align_up(span, 4096));
    if (!bounce) return -ENOMEM;
    int r = 0;
    /* Only the first and last sectors hold bytes the write keeps. */
    if (offset != start) r = f->ops.read(f->ops.context, start, bounce, sector);
    if (r == 0 && offset + length != end && (end - sector != start || offset == start))
        r = f->ops.read(f->ops.context, end - sector, bounce + span - sector, sector);
    if (r == 0) {
        memcpy(bounce + (offset - start), data, length);
        r = f->ops.write(f->ops.context, start, bounce, span);
    }
    free(bounce);
    return r;
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    struct cfuse_file *f = file_of(req);
    (void)fi;
    if (ino != FILE_INO) { fuse_reply_err(req, EISDIR); return; }
    if (f->config.read_only) { fuse_reply_err(req, EROFS); return; }
    if (off < 0) { fuse_reply_err(req, EINVAL); return; }
    uint64_t offset = (uint64_t)off;
    if (size == 0) { fuse_reply_write(req, 0); return; }
    /* Like a block device: a write from the end on is refused, one across it is cut short. */
    if (offset >= f->config.size) { fuse_reply_err(req, ENOSPC); return; }
    size_t length = size;
    if (length > f->config.size - offset) length = (size_t)(f->config.size - offset);
    if (aligned(f, offset, length)) {
        shared_enter(f);
        if (f->ops.write_async) {
            struct cfuse_request *request = request_new(f, req, length, 1);
            if (!request) { shared_leave(f); fuse_reply_err(req, ENOMEM); return; }
            f->ops.write_async(f->ops.context, request, offset, buf, length);
            return;
        }
        int r = write_range(f, offset, buf, length);
        shared_leave(f);
        if (r < 0) fuse_reply_err(req, -r);
        else fuse_reply_write(req, length);
        return;
    }
    exclusive_enter(f);
    int r = write_range(f, offset, buf, length);
    exclusive_leave(f);
    if (r < 0) fuse_reply_err(req, -r);
    else fuse_reply_write(req, length);
}

static int do_flush(struct cfuse_file *f) {
    if (!f->config.can_flush || f->config.read_only) return 0;
    return f->ops.flush(f->ops.context);
}

/* close() of a descriptor: answered at once, without the device. Every close sends it,
 * also a forked child's of a descriptor it inherited (before its exec); if that waited for
 * the device, and the device for a thread the parent has blocked in that very fork, both
 * would wait for good. Writes are acknowledged by the backend already; fsync makes them
 * durable. */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino; (void)fi;
    fuse_reply_err(req, 0);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)ino; (void)datasync; (void)fi;
    fuse_reply_err(req, -do_flush(file_of(req)));
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino; (void)fi;
    fuse_reply_err(req, 0);
}

/* PUNCH_HOLE|KEEP_SIZE discards (whole sectors; partial ones at the ends are written with
 * zeros); mode 0 inside the disk has nothing to allocate. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
    struct cfuse_file *f = file_of(req);
    (void)fi;
    if (ino != FILE_INO) { fuse_reply_err(req, EISDIR); return; }
    if (off < 0 || len <= 0) { fuse_reply_err(req, EINVAL); return; }
    uint64_t offset = (uint64_t)off, length = (uint64_t)len;
    if (mode == 0) {
        if (f->config.read_only) { fuse_reply_err(req, EROFS); return; }
        fuse_reply_err(req, offset + length <= f->config.size && offset + length > offset ? 0 : ENOSPC);
        return;
    }
    if (mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) { fuse_reply_err(req, EOPNOTSUPP); return; }
    if (f->config.read_only) { fuse_reply_err(req, EROFS); return; }
    if (!f->config.can_discard) { fuse_reply_err(req, EOPNOTSUPP); return; }
    if (offset >= f->config.size) { fuse_reply_err(req, 0); return; }
    if (length > f->config.size - offset) length = f->config.size - offset;
    uint64_t sector = f->config.sector_size;
    uint64_t start = align_up(offset, sector), end = align_down(offset + length, sector);
    int r = 0;
    if (start >= end) {
        /* No whole sector: zeros written over the bytes. */
        char *zeros = calloc(1, (size_t)length);
        if (!zeros) { fuse_reply_err(req, ENOMEM); return; }
        exclusive_enter(f);
        r = write_range(f, offset, zeros, (size_t)length);
        exclusive_leave(f);
        free(zeros);
    } else {
        int edges = start != offset || end != offset + length;
        if (edges) exclusive_enter(f);
        else shared_enter(f);
        static const char zeros[65536];
        if (start != offset) r = write_range(f, offset, zeros, (size_t)(start - offset));
        if (r == 0 && end != offset + length) r = write_range(f, end, zeros, (size_t)(offset + length - end));
        if (r == 0) r = f->ops.discard(f->ops.context, start, end - start);
        if (edges) exclusive_leave(f);
        else shared_leave(f);
    }
    fuse_reply_err(req, -r);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino) {
    struct cfuse_file *f = file_of(req);
    (void)ino;
    struct statvfs st;
    memset(&st, 0, sizeof st);
    st.f_bsize = 4096;
    st.f_frsize = f->config.sector_size;
    st.f_blocks = f->config.size / f->config.sector_size;
    st.f_files = 2;
    st.f_namemax = 255;
    if (f->config.read_only) st.f_flag |= ST_RDONLY;
    fuse_reply_statfs(req, &st);
}

/* The kernel sends at most max_background asynchronous direct I/O requests at once
 * (default 12): let a program's queue depth reach the device. */
static void op_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    conn->max_background = 128;
    conn->congestion_threshold = 96;
}

static const struct fuse_lowlevel_ops operations = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .setattr = op_setattr,
    .readdir = op_readdir,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .flush = op_flush,
    .fsync = op_fsync,
    .release = op_release,
    .fallocate = op_fallocate,
    .statfs = op_statfs,
};

struct cfuse_file *cfuse_file_mount(const char *mountpoint, const cfuse_file_config *config,
                                    const cfuse_device_ops *ops, int *error) {
    uint32_t sector = config->sector_size;
    if (sector < 512 || sector > 65536 || (sector & (sector - 1)) != 0 || config->size % sector != 0 || config->size == 0
        || !config->name || !*config->name || strchr(config->name, '/') || strlen(config->name) > 255
        || !strcmp(config->name, ".") || !strcmp(config->name, "..")) {
        *error = EINVAL;
        return NULL;
    }
    struct cfuse_file *f = calloc(1, sizeof *f);
    if (!f) { *error = ENOMEM; return NULL; }
    f->config = *config;
    f->ops = *ops;
    f->name = strdup(config->name);
    f->mountpoint = strdup(mountpoint);
    f->config.name = f->name;
    pthread_mutex_init(&f->gate, NULL);
    pthread_cond_init(&f->gate_changed, NULL);
    pthread_mutex_init(&f->stop_lock, NULL);
    char *argv[] = {"xenpv", "-o", config->read_only ? "fsname=xenpv,subtype=xenpv,ro" : "fsname=xenpv,subtype=xenpv", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    f->session = fuse_session_new(&args, &operations, sizeof operations, f);
    if (!f->session) { *error = EINVAL; goto fail; }
    if (fuse_session_mount(f->session, mountpoint) != 0) {
        *error = errno ? errno : EINVAL;
        fuse_session_destroy(f->session);
        goto fail;
    }
    return f;
fail:
    pthread_cond_destroy(&f->gate_changed);
    pthread_mutex_destroy(&f->gate);
    pthread_mutex_destroy(&f->stop_lock);
    free(f->name);
    free(f->mountpoint);
    free(f);
    return NULL;
}

int cfuse_file_run(struct cfuse_file *f) {
    struct fuse_loop_config *loop = fuse_loop_cfg_create();
    if (!loop) return -ENOMEM;
    unsigned threads = f->config.max_threads ? f->config.max_threads : 1;
    fuse_loop_cfg_set_max_threads(loop, threads);
    fuse_loop_cfg_set_idle_threads(loop, threads);
    int r = fuse_session_loop_mt(f->session, loop);
    fuse_loop_cfg_destroy(loop);
    return r;
}

void cfuse_file_stop(struct cfuse_file *f) {
    pthread_mutex_lock(&f->stop_lock);
    if (!f->stopped) {
        f->stopped = 1;
        fuse_session_exit(f->session);
        /* Detaching ends the connection once nothing holds the file open: every worker's
         * read of /dev/fuse returns ENODEV and the loop ends. */
        umount2(f->mountpoint, MNT_DETACH);
    }
    pthread_mutex_unlock(&f->stop_lock);
}

void cfuse_file_destroy(struct cfuse_file *f) {
    /* A late answer writes to the session's descriptor: keep it until the last one. */
    pthread_mutex_lock(&f->gate);
    while (f->pending) pthread_cond_wait(&f->gate_changed, &f->gate);
    pthread_mutex_unlock(&f->gate);
    fuse_session_unmount(f->session);
    fuse_session_destroy(f->session);
    pthread_cond_destroy(&f->gate_changed);
    pthread_mutex_destroy(&f->gate);
    pthread_mutex_destroy(&f->stop_lock);
    free(f->name);
    free(f->mountpoint);
    free(f);
}
