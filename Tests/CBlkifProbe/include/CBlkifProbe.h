/*
 * CBlkifProbe (tests only): what the C compiler says about blkif layouts, and
 * slots written or read through C field names, so Swift's encoder and decoder
 * are checked against C rather than against numbers typed into a test.
 */
#ifndef CBLKIFPROBE_H
#define CBLKIFPROBE_H

#include "CXen.h"
#include "CBlkifABI.h"

/* sizeof/offsetof of the native structures (blkif.h). */
struct cblkif_probe_layout {
    uint32_t req_size, req_operation, req_nr_segments, req_handle, req_id, req_sector_number, req_seg;
    uint32_t seg_size, seg_gref, seg_first_sect, seg_last_sect;
    uint32_t discard_size, discard_flag, discard_handle, discard_id, discard_sector_number, discard_nr_sectors;
    uint32_t indirect_size, indirect_indirect_op, indirect_nr_segments, indirect_id,
             indirect_sector_number, indirect_handle, indirect_grefs;
    uint32_t rsp_size, rsp_id, rsp_operation, rsp_status;
    uint32_t ring_entry_size;
    /* The i386 layouts, measured independently of CBlkifABI's constants. */
    uint32_t x32_req_size, x32_id, x32_sector_number, x32_seg, x32_rsp_size, x32_rsp_status, x32_entry_size;
    uint32_t x32_discard_nr_sectors, x32_indirect_size, x32_indirect_grefs, x32_indirect_handle;
};
struct cblkif_probe_layout cblkif_probe_layout(void);

/* Writes a read/write-style slot through the C fields (native when x86_32 == 0). */
void cblkif_probe_fill_rw(void *slot, int x86_32, uint8_t op, uint8_t nseg, uint16_t handle,
                          uint64_t id, uint64_t sector, const uint32_t *grefs,
                          const uint8_t *first, const uint8_t *last);
void cblkif_probe_fill_discard(void *slot, int x86_32, uint8_t flag, uint16_t handle,
                               uint64_t id, uint64_t sector, uint64_t nr_sectors);
void cblkif_probe_fill_indirect(void *slot, int x86_32, uint8_t indirect_op, uint16_t nseg,
                                uint16_t handle, uint64_t id, uint64_t sector,
                                const uint32_t *grefs, int ngrefs);
/* ring.h's __RING_SIZE for a ring of `pages` 4 KiB pages, per ABI. */
uint32_t cblkif_probe_ring_size(int x86_32, uint32_t pages);
/* offsetof(sring, ring): where the slots start, per ABI. */
uint32_t cblkif_probe_ring_offset(int x86_32);

/* Reads a response slot through the C fields. */
void cblkif_probe_read_response(const void *slot, int x86_32, uint64_t *id, uint8_t *op, int16_t *status);
/* Reads a native request slot back through the C fields (for the encoder). */
void cblkif_probe_read_rw(const void *slot, uint8_t *op, uint8_t *nseg, uint16_t *handle,
                          uint64_t *id, uint64_t *sector, uint32_t *grefs, uint8_t *first, uint8_t *last);

#endif
