#ifndef CCRC32C_H
#define CCRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Whether this CPU computes CRC-32C in hardware (x86-64 SSE4.2's crc32 instruction). */
int ccrc32c_hardware(void);

/* Continues `crc` (the value returned for the bytes before, 0 to start) over `length`
 * bytes at `data` with the CPU's crc32 instruction. Only when ccrc32c_hardware() is 1. */
uint32_t ccrc32c_update_hardware(uint32_t crc, const void *data, size_t length);

#endif
