#include "CBlkifProbe.h"
#include <string.h>

#define OFF(t, f) ((uint32_t)offsetof(t, f))

struct cblkif_probe_layout cblkif_probe_layout(void) {
    struct cblkif_probe_layout l;
    l.req_size = sizeof(struct blkif_request);
    l.req_operation = OFF(struct blkif_request, operation);
    l.req_nr_segments = OFF(struct blkif_request, nr_segments);
    l.req_handle = OFF(struct blkif_request, handle);
    l.req_id = OFF(struct blkif_request, id);
    l.req_sector_number = OFF(struct blkif_request, sector_number);
    l.req_seg = OFF(struct blkif_request, seg);
    l.seg_size = sizeof(struct blkif_request_segment);
    l.seg_gref = OFF(struct blkif_request_segment, gref);
    l.seg_first_sect = OFF(struct blkif_request_segment, first_sect);
    l.seg_last_sect = OFF(struct blkif_request_segment, last_sect);
    l.discard_size = sizeof(struct blkif_request_discard);
    l.discard_flag = OFF(struct blkif_request_discard, flag);
    l.discard_handle = OFF(struct blkif_request_discard, handle);
    l.discard_id = OFF(struct blkif_request_discard, id);
    l.discard_sector_number = OFF(struct blkif_request_discard, sector_number);
    l.discard_nr_sectors = OFF(struct blkif_request_discard, nr_sectors);
    l.indirect_size = sizeof(struct blkif_request_indirect);
    l.indirect_indirect_op = OFF(struct blkif_request_indirect, indirect_op);
    l.indirect_nr_segments = OFF(struct blkif_request_indirect, nr_segments);
    l.indirect_id = OFF(struct blkif_request_indirect, id);
    l.indirect_sector_number = OFF(struct blkif_request_indirect, sector_number);
    l.indirect_handle = OFF(struct blkif_request_indirect, handle);
    l.indirect_grefs = OFF(struct blkif_request_indirect, indirect_grefs);
    l.rsp_size = sizeof(struct blkif_response);
    l.rsp_id = OFF(struct blkif_response, id);
    l.rsp_operation = OFF(struct blkif_response, operation);
    l.rsp_status = OFF(struct blkif_response, status);
    l.ring_entry_size = sizeof(union blkif_sring_entry);
    l.x32_req_size = sizeof(struct cblkif_x86_32_request);
    l.x32_id = OFF(struct cblkif_x86_32_request, id);
    l.x32_sector_number = OFF(struct cblkif_x86_32_request, sector_number);
    l.x32_seg = OFF(struct cblkif_x86_32_request, seg);
    l.x32_rsp_size = sizeof(struct cblkif_x86_32_response);
    l.x32_rsp_status = OFF(struct cblkif_x86_32_response, status);
    l.x32_entry_size = sizeof(union cblkif_x86_32_ring_entry);
    l.x32_discard_nr_sectors = OFF(struct cblkif_x86_32_request_discard, nr_sectors);
    l.x32_indirect_size = sizeof(struct cblkif_x86_32_request_indirect);
    l.x32_indirect_grefs = OFF(struct cblkif_x86_32_request_indirect, indirect_grefs);
    l.x32_indirect_handle = OFF(struct cblkif_x86_32_request_indirect, handle);
    return l;
}

void cblkif_probe_fill_rw(void *slot, int x86_32, uint8_t op, uint8_t nseg, uint16_t handle,
                          uint64_t id, uint64_t sector, const uint32_t *grefs,
                          const uint8_t *first, const uint8_t *last) {
    /* The segment array is written up to 11 entries whatever nseg claims. */
    int n = nseg < BLKIF_MAX_SEGMENTS_PER_REQUEST ? nseg : BLKIF_MAX_SEGMENTS_PER_REQUEST;
    if (x86_32) {
        struct cblkif_x86_32_request r;
        memset(&r, 0, sizeof r);
        r.operation = op; r.nr_segments = nseg; r.handle = handle; r.id = id; r.sector_number = sector;
        for (int i = 0; i < n; i++) {
            r.seg[i].gref = grefs[i]; r.seg[i].first_sect = first[i]; r.seg[i].last_sect = last[i];
        }
        memcpy(slot, &r, sizeof r);
    } else {
        struct blkif_request r;
        memset(&r, 0, sizeof r);
        r.operation = op; r.nr_segments = nseg; r.handle = handle; r.id = id; r.sector_number = sector;
        for (int i = 0; i < n; i++) {
            r.seg[i].gref = grefs[i]; r.seg[i].first_sect = first[i]; r.seg[i].last_sect = last[i];
        }
        memcpy(slot, &r, sizeof r);
    }
}

void cblkif_probe_fill_discard(void *slot, int x86_32, uint8_t flag, uint16_t handle,
                               uint64_t id, uint64_t sector, uint64_t nr_sectors) {
    if (x86_32) {
        struct cblkif_x86_32_request_discard r;
        memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_DISCARD; r.flag = flag; r.handle = handle; r.id = id;
        r.sector_number = sector; r.nr_sectors = nr_sectors;
        memcpy(slot, &r, sizeof r);
    } else {
        struct blkif_request_discard r;
        memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_DISCARD; r.flag = flag; r.handle = handle; r.id = id;
        r.sector_number = sector; r.nr_sectors = nr_sectors;
        memcpy(slot, &r, sizeof r);
    }
}

void cblkif_probe_fill_indirect(void *slot, int x86_32, uint8_t indirect_op, uint16_t nseg,
                                uint16_t handle, uint64_t id, uint64_t sector,
                                const uint32_t *grefs, int ngrefs) {
    if (x86_32) {
        struct cblkif_x86_32_request_indirect r;
        memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_INDIRECT; r.indirect_op = indirect_op; r.nr_segments = nseg;
        r.handle = handle; r.id = id; r.sector_number = sector;
        for (int i = 0; i < ngrefs && i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++) r.indirect_grefs[i] = grefs[i];
        memcpy(slot, &r, sizeof r);
    } else {
        struct blkif_request_indirect r;
        memset(&r, 0, sizeof r);
        r.operation = BLKIF_OP_INDIRECT; r.indirect_op = indirect_op; r.nr_segments = nseg;
        r.handle = handle; r.id = id; r.sector_number = sector;
        for (int i = 0; i < ngrefs && i < BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST; i++) r.indirect_grefs[i] = grefs[i];
        memcpy(slot, &r, sizeof r);
    }
}

void cblkif_probe_read_response(const void *slot, int x86_32, uint64_t *id, uint8_t *op, int16_t *status) {
    if (x86_32) {
        struct cblkif_x86_32_response r;
        memcpy(&r, slot, sizeof r);
        *id = r.id; *op = r.operation; *status = r.status;
    } else {
        struct blkif_response r;
        memcpy(&r, slot, sizeof r);
        *id = r.id; *op = r.operation; *status = r.status;
    }
}

void cblkif_probe_read_rw(const void *slot, uint8_t *op, uint8_t *nseg, uint16_t *handle,
                          uint64_t *id, uint64_t *sector, uint32_t *grefs, uint8_t *first, uint8_t *last) {
    struct blkif_request r;
    memcpy(&r, slot, sizeof r);
    *op = r.operation; *nseg = r.nr_segments; *handle = r.handle; *id = r.id; *sector = r.sector_number;
    for (int i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
        grefs[i] = r.seg[i].gref; first[i] = r.seg[i].first_sect; last[i] = r.seg[i].last_sect;
    }
}

uint32_t cblkif_probe_ring_size(int x86_32, uint32_t pages) {
    return x86_32 ? (uint32_t)__RING_SIZE((struct cblkif_x86_32_sring *)0, pages * 4096)
                  : (uint32_t)__RING_SIZE((struct blkif_sring *)0, pages * 4096);
}

uint32_t cblkif_probe_ring_offset(int x86_32) {
    return x86_32 ? (uint32_t)offsetof(struct cblkif_x86_32_sring, ring) : (uint32_t)offsetof(struct blkif_sring, ring);
}
