/*
 * CPageCacheProbe (tests only): what the page cache holds of a file, by cachestat(2)
 * (Linux 6.5), which Swift cannot call (syscall(2) is variadic).
 */
#ifndef CPAGECACHEPROBE_H
#define CPAGECACHEPROBE_H
#include <stdint.h>

/* The dirty pages of the whole file at `path` in *dirty: 0, or an errno (ENOSYS: no cachestat). */
int cpc_dirty_pages(const char *path, uint64_t *dirty);

#endif
