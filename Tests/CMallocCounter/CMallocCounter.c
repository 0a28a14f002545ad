#define _GNU_SOURCE
#include "CMallocCounter.h"
#include <errno.h>
#include <stddef.h>
#include <string.h>

#if defined(__has_feature)
#  if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#    define CMALLOC_SANITIZED 1
#  endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#  define CMALLOC_SANITIZED 1
#endif

#ifdef CMALLOC_SANITIZED
/* A sanitizer owns malloc: interposing here would bypass it. Counting is off. */
int cmalloc_counting_enabled(void) { return 0; }
uint64_t cmalloc_count_this_thread(void) { return 0; }
#else
int cmalloc_counting_enabled(void) { return 1; }

/* glibc's own entry points, which the interposers forward to. */
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

/* initial-exec TLS: no allocation or lazy resolution when first touched inside malloc. */
static __thread uint64_t allocations __attribute__((tls_model("initial-exec")));

uint64_t cmalloc_count_this_thread(void) { return allocations; }

void *malloc(size_t n) { allocations++; return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { allocations++; return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { allocations++; return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *aligned_alloc(size_t al, size_t n) { allocations++; return __libc_memalign(al, n); }
void *memalign(size_t al, size_t n) { allocations++; return __libc_memalign(al, n); }
int posix_memalign(void **out, size_t al, size_t n) {
    if (al < sizeof(void *) || (al & (al - 1)) != 0) return EINVAL;
    allocations++;
    void *p = __libc_memalign(al, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
#endif
