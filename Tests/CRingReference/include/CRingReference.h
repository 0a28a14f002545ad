/*
 * CRingReference: Xen's own ring.h macros, driven from Swift tests.
 *
 * Test-only. Each function applies exactly one ring.h macro (or the loop
 * ring.h's comments prescribe around it) to a ring of blkif, netif_tx or
 * netif_rx entries, so Swift's ring can be compared with C step by step.
 */
#ifndef CRING_REFERENCE_H
#define CRING_REFERENCE_H

#include "CXen.h"

/* Offsets of the shared header, the same for every DEFINE_RING_TYPES. */
size_t cref_sring_offset_req_prod(void);
size_t cref_sring_offset_req_event(void);
size_t cref_sring_offset_rsp_prod(void);
size_t cref_sring_offset_rsp_event(void);
size_t cref_sring_offset_pvt(void);
size_t cref_sring_offset_pad(void);

/* Layouts of the entry structs. */
size_t cref_sizeof_blkif_request(void);
size_t cref_alignof_blkif_request(void);
size_t cref_offsetof_blkif_request(int field); /* 0 operation 1 nr_segments 2 handle 3 id 4 sector_number 5 seg */
size_t cref_sizeof_blkif_request_segment(void);
size_t cref_sizeof_blkif_response(void);
size_t cref_offsetof_blkif_response(int field); /* 0 id 1 operation 2 status */
size_t cref_sizeof_netif_tx_request(void);
size_t cref_offsetof_netif_tx_request(int field); /* 0 gref 1 offset 2 flags 3 id 4 size */
size_t cref_sizeof_netif_tx_response(void);
size_t cref_offsetof_netif_tx_response(int field); /* 0 id 1 status */
size_t cref_sizeof_netif_rx_request(void);
size_t cref_offsetof_netif_rx_request(int field); /* 0 id 1 pad 2 gref */
size_t cref_sizeof_netif_rx_response(void);
size_t cref_offsetof_netif_rx_response(int field); /* 0 id 1 offset 2 flags 3 status */

#define CREF_DECLARE(NAME, REQ, RSP)                                                   \
typedef struct { NAME##_front_ring_t front; NAME##_back_ring_t back; } cref_##NAME##_t; \
/* sizeof(union NAME##_sring_entry), __RING_SIZE and __CONST_RING_SIZE. */              \
size_t cref_##NAME##_entry_size(void);                                                  \
size_t cref_##NAME##_ring_offset(void);                                                 \
unsigned cref_##NAME##_ring_size(void *page, size_t bytes);                             \
unsigned cref_##NAME##_const_ring_size(size_t bytes);                                   \
/* SHARED_RING_INIT + FRONT_RING_INIT. */                                               \
void cref_##NAME##_front_init(cref_##NAME##_t *r, void *page, size_t bytes);            \
/* SHARED_RING_INIT, then every index at start, then FRONT_RING_ATTACH(start). */       \
void cref_##NAME##_front_init_at(cref_##NAME##_t *r, void *page, size_t bytes, RING_IDX start); \
void cref_##NAME##_front_attach(cref_##NAME##_t *r, void *page, size_t bytes, RING_IDX i); \
void cref_##NAME##_back_init(cref_##NAME##_t *r, void *page, size_t bytes);             \
void cref_##NAME##_back_attach(cref_##NAME##_t *r, void *page, size_t bytes, RING_IDX i); \
unsigned cref_##NAME##_front_free(const cref_##NAME##_t *r);  /* RING_FREE_REQUESTS */  \
int cref_##NAME##_front_full(const cref_##NAME##_t *r);       /* RING_FULL */           \
/* memcpy(RING_GET_REQUEST(req_prod_pvt), req); req_prod_pvt++. */                           \
void cref_##NAME##_front_produce(cref_##NAME##_t *r, const REQ *req);                   \
int cref_##NAME##_front_push(cref_##NAME##_t *r);  /* RING_PUSH_REQUESTS_AND_CHECK_NOTIFY */ \
/* rsp_prod once, xen_rmb, RING_RESPONSE_PROD_OVERFLOW -> -1, else RING_COPY_RESPONSE   \
 * up to max responses; returns how many. */                                            \
int cref_##NAME##_front_consume(cref_##NAME##_t *r, RSP *out, int max);                 \
int cref_##NAME##_front_final_check(cref_##NAME##_t *r); /* RING_FINAL_CHECK_FOR_RESPONSES != 0 */ \
int cref_##NAME##_front_has_unconsumed(cref_##NAME##_t *r); /* RING_HAS_UNCONSUMED_RESPONSES */ \
int cref_##NAME##_response_prod_overflow(const cref_##NAME##_t *r, RING_IDX prod);      \
/* req_prod once, xen_rmb, RING_REQUEST_PROD_OVERFLOW -> -1, else RING_COPY_REQUEST     \
 * while !RING_REQUEST_CONS_OVERFLOW, up to max requests; returns how many. */          \
int cref_##NAME##_back_consume(cref_##NAME##_t *r, REQ *out, int max);                  \
void cref_##NAME##_back_produce(cref_##NAME##_t *r, const RSP *rsp);                    \
int cref_##NAME##_back_push(cref_##NAME##_t *r);  /* RING_PUSH_RESPONSES_AND_CHECK_NOTIFY */ \
int cref_##NAME##_back_final_check(cref_##NAME##_t *r); /* RING_FINAL_CHECK_FOR_REQUESTS != 0 */ \
unsigned cref_##NAME##_back_has_unconsumed(cref_##NAME##_t *r); /* RING_HAS_UNCONSUMED_REQUESTS */ \
int cref_##NAME##_request_prod_overflow(const cref_##NAME##_t *r, RING_IDX prod);       \
int cref_##NAME##_request_cons_overflow(const cref_##NAME##_t *r, RING_IDX cons);

CREF_DECLARE(blkif, blkif_request_t, blkif_response_t)
CREF_DECLARE(netif_tx, netif_tx_request_t, netif_tx_response_t)
CREF_DECLARE(netif_rx, netif_rx_request_t, netif_rx_response_t)

#endif
