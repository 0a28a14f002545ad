#include "CPageTracking.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

// The kernel's values (include/uapi/linux/userfaultfd.h and fs.h of 6.7+),
// absent from this system's older uapi headers.
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

struct cpt_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define CPT_PAGEMAP_SCAN _IOWR('f', 16, struct cpt_pm_scan_arg)
#define CPT_PM_SCAN_WP_MATCHING (1 << 0)
#define CPT_PM_SCAN_CHECK_WPASYNC (1 << 1)
#define CPT_PAGE_IS_WRITTEN (1 << 1)

int cpt_uffd_open(int remap_events) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    // Unprivileged processes may still have user-mode-only descriptors; in
    // asynchronous mode the kernel resolves every fault itself, so nothing is lost.
    if (fd < 0 && errno == EPERM) fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0) return -errno;
    struct uffdio_api api = {
        .api = UFFD_API,
        .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED
                    | (remap_events ? UFFD_FEATURE_EVENT_REMAP : 0),
    };
    if (ioctl(fd, UFFDIO_API, &api) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

long cpt_uffd_drain_events(int uffd, int stop) {
    long read_count = 0;
    struct pollfd fds[2] = {{.fd = uffd, .events = POLLIN}, {.fd = stop, .events = POLLIN}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        // Events first: the mremap waiting for one may be what the stop waits for.
        struct uffd_msg msgs[16];
        ssize_t n;
        while ((n = read(uffd, msgs, sizeof msgs)) > 0) read_count += n / (ssize_t)sizeof msgs[0];
        if (fds[1].revents) return read_count;
        if (fds[0].revents & (POLLERR | POLLNVAL)) fds[0].fd = -1;  // nothing more to read there
    }
}

int cpt_uffd_register(int uffd, uint64_t start, uint64_t length) {
    struct uffdio_register reg = {.range = {.start = start, .len = length}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) return -errno;
    struct uffdio_writeprotect wp = {.range = {.start = start, .len = length}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
        int e = errno;
        struct uffdio_range range = {.start = start, .len = length};
        (void)ioctl(uffd, UFFDIO_UNREGISTER, &range);
        return -e;
    }
    return 0;
}

int cpt_uffd_unregister(int uffd, uint64_t start, uint64_t length) {
    struct uffdio_range range = {.start = start, .len = length};
    return ioctl(uffd, UFFDIO_UNREGISTER, &range) == 0 ? 0 : -errno;
}

long cpt_scan_written(int pagemap, uint64_t start, uint64_t end, cpt_region *vec, uint64_t vec_len, uint64_t *walk_end) {
    struct cpt_pm_scan_arg arg = {
        .size = sizeof(arg),
        .flags = CPT_PM_SCAN_WP_MATCHING | CPT_PM_SCAN_CHECK_WPASYNC,
        .start = start,
        .end = end,
        .vec = (uint64_t)(uintptr_t)vec,
        .vec_len = vec_len,
        .category_mask = CPT_PAGE_IS_WRITTEN,
        .return_mask = CPT_PAGE_IS_WRITTEN,
    };
    long n = ioctl(pagemap, CPT_PAGEMAP_SCAN, &arg);
    if (n < 0) return -errno;
    *walk_end = arg.walk_end;
    return n;
}
