/*
 * CBlkifABI: the ring-slot layouts of blkif that Xen's public header leaves out.
 *
 * blkif.h defines only the native structures. A 32-bit x86 guest lays the same
 * fields out with i386 alignment: a uint64_t is aligned to 4, so `id` follows the
 * 4-byte header directly and every later field moves up. Linux blkback
 * (drivers/block/xen-blkback/common.h) spells that layout as packed structures;
 * these are the same layouts, written out here so Swift and the tests can see
 * them. The x86_64-abi layout is the native `struct blkif_request` on x86-64.
 */
#ifndef CBLKIFABI_H
#define CBLKIFABI_H

#include "CXen.h"

/* A read/write request as an i386 guest writes it (108 bytes). */
struct cblkif_x86_32_request {
    uint8_t        operation;
    uint8_t        nr_segments;
    blkif_vdev_t   handle;
    uint64_t       id;
    blkif_sector_t sector_number;
    struct blkif_request_segment seg[BLKIF_MAX_SEGMENTS_PER_REQUEST];
} __attribute__((__packed__));

/* BLKIF_OP_DISCARD as an i386 guest writes it. */
struct cblkif_x86_32_request_discard {
    uint8_t        operation;
    uint8_t        flag;
    blkif_vdev_t   handle;
    uint64_t       id;
    blkif_sector_t sector_number;
    uint64_t       nr_sectors;
} __attribute__((__packed__));

/* BLKIF_OP_INDIRECT as an i386 guest writes it (64 bytes, padded at the end). */
struct cblkif_x86_32_request_indirect {
    uint8_t        operation;
    uint8_t        indirect_op;
    uint16_t       nr_segments;
    uint64_t       id;
    blkif_sector_t sector_number;
    blkif_vdev_t   handle;
    uint16_t       _pad1;
    grant_ref_t    indirect_grefs[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
    uint64_t       _pad2;
} __attribute__((__packed__));

/* The response as an i386 guest reads it: status is 2-aligned, at 10 (12 bytes). */
struct cblkif_x86_32_response {
    uint64_t id;
    uint8_t  operation;
    uint8_t  _pad;
    int16_t  status;
} __attribute__((__packed__));

/* One slot of an i386 ring holds the larger of request and response. */
union cblkif_x86_32_ring_entry {
    struct cblkif_x86_32_request req;
    struct cblkif_x86_32_response rsp;
};

/* The i386 shared ring, as Linux declares it: ring.h's own macro over the packed slots. */
DEFINE_RING_TYPES(cblkif_x86_32, struct cblkif_x86_32_request, struct cblkif_x86_32_response);

/* Slot sizes: the stride of the ring array for each ABI. */
static const uint32_t cblkif_native_slot_size = (uint32_t)sizeof(union blkif_sring_entry);
static const uint32_t cblkif_x86_32_slot_size = (uint32_t)sizeof(union cblkif_x86_32_ring_entry);

/*
 * Field offsets of the i386 layouts, taken from the compiler so Swift never
 * hard-codes them. `*_rw_*`: read/write; `*_discard_*`; `*_indirect_*`; `*_rsp_*`.
 */
static const uint32_t cblkif_x86_32_off_operation = (uint32_t)offsetof(struct cblkif_x86_32_request, operation);
static const uint32_t cblkif_x86_32_off_nr_segments = (uint32_t)offsetof(struct cblkif_x86_32_request, nr_segments);
static const uint32_t cblkif_x86_32_off_handle = (uint32_t)offsetof(struct cblkif_x86_32_request, handle);
static const uint32_t cblkif_x86_32_off_id = (uint32_t)offsetof(struct cblkif_x86_32_request, id);
static const uint32_t cblkif_x86_32_off_sector_number = (uint32_t)offsetof(struct cblkif_x86_32_request, sector_number);
static const uint32_t cblkif_x86_32_off_seg = (uint32_t)offsetof(struct cblkif_x86_32_request, seg);
static const uint32_t cblkif_x86_32_off_discard_flag = (uint32_t)offsetof(struct cblkif_x86_32_request_discard, flag);
static const uint32_t cblkif_x86_32_off_discard_sector_number = (uint32_t)offsetof(struct cblkif_x86_32_request_discard, sector_number);
static const uint32_t cblkif_x86_32_off_discard_nr_sectors = (uint32_t)offsetof(struct cblkif_x86_32_request_discard, nr_sectors);
static const uint32_t cblkif_x86_32_off_indirect_op = (uint32_t)offsetof(struct cblkif_x86_32_request_indirect, indirect_op);
static const uint32_t cblkif_x86_32_off_indirect_nr_segments = (uint32_t)offsetof(struct cblkif_x86_32_request_indirect, nr_segments);
static const uint32_t cblkif_x86_32_off_indirect_sector_number = (uint32_t)offsetof(struct cblkif_x86_32_request_indirect, sector_number);
static const uint32_t cblkif_x86_32_off_indirect_handle = (uint32_t)offsetof(struct cblkif_x86_32_request_indirect, handle);
static const uint32_t cblkif_x86_32_off_indirect_grefs = (uint32_t)offsetof(struct cblkif_x86_32_request_indirect, indirect_grefs);
static const uint32_t cblkif_x86_32_rsp_size = (uint32_t)sizeof(struct cblkif_x86_32_response);
static const uint32_t cblkif_x86_32_off_rsp_operation = (uint32_t)offsetof(struct cblkif_x86_32_response, operation);
static const uint32_t cblkif_x86_32_off_rsp_status = (uint32_t)offsetof(struct cblkif_x86_32_response, status);

/*
 * Segments one indirect page holds: PAGE_SIZE / sizeof(struct blkif_request_segment)
 * (blkif.h, BLKIF_OP_INDIRECT). Linux calls it SEGS_PER_INDIRECT_FRAME.
 */
static const uint32_t cblkif_segs_per_indirect_frame =
    (uint32_t)(4096 / sizeof(struct blkif_request_segment));
/* The flag bit of a secure discard (a macro with a shift Swift does not import). */
static const uint8_t cblkif_discard_secure = BLKIF_DISCARD_SECURE;

#endif
