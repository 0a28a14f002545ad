#include "CCRC32C.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>

int ccrc32c_hardware(void) { return __builtin_cpu_supports("sse4.2") ? 1 : 0; }

/* Eight bytes per instruction; the unaligned head and the tail a byte at a time. */
__attribute__((target("sse4.2")))
uint32_t ccrc32c_update_hardware(uint32_t crc, const void *data, size_t length) {
    const unsigned char *p = data;
    uint64_t c = ~crc;
    while (length > 0 && ((uintptr_t)p & 7) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        length--;
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = _mm_crc32_u64(c, word);
        p += 8;
        length -= 8;
    }
    while (length > 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        length--;
    }
    return ~(uint32_t)c;
}
#else
int ccrc32c_hardware(void) { return 0; }

uint32_t ccrc32c_update_hardware(uint32_t crc, const void *data, size_t length) {
    (void)data;
    (void)length;
    return crc;
}
#endif
