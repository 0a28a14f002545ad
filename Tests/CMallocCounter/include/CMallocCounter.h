/*
 * CMallocCounter (tests only): counts malloc/calloc/realloc/posix_memalign/aligned_alloc
 * calls made by the calling thread, by interposing them over glibc's allocator. Tests
 * use it to show a hot path allocates nothing per operation.
 */
#ifndef CMALLOCCOUNTER_H
#define CMALLOCCOUNTER_H
#include <stdint.h>

/* 0 when built with a sanitizer (which owns malloc); then nothing is counted. */
int cmalloc_counting_enabled(void);
/* Allocations made by this thread so far. */
uint64_t cmalloc_count_this_thread(void);

#endif
