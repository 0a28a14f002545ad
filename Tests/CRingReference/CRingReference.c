#include "CRingReference.h"
#include <string.h>

size_t cref_sring_offset_req_prod(void)  { return offsetof(struct blkif_sring, req_prod); }
size_t cref_sring_offset_req_event(void) { return offsetof(struct blkif_sring, req_event); }
size_t cref_sring_offset_rsp_prod(void)  { return offsetof(struct blkif_sring, rsp_prod); }
size_t cref_sring_offset_rsp_event(void) { return offsetof(struct blkif_sring, rsp_event); }
size_t cref_sring_offset_pvt(void)       { return offsetof(struct blkif_sring, pvt); }
size_t cref_sring_offset_pad(void)       { return offsetof(struct blkif_sring, __pad); }

size_t cref_sizeof_blkif_request(void) { return sizeof(struct blkif_request); }
size_t cref_alignof_blkif_request(void) { return _Alignof(struct blkif_request); }
size_t cref_sizeof_blkif_request_segment(void) { return sizeof(struct blkif_request_segment); }
size_t cref_offsetof_blkif_request(int f) {
    switch (f) {
    case 0: return offsetof(struct blkif_request, operation);
    case 1: return offsetof(struct blkif_request, nr_segments);
    case 2: return offsetof(struct blkif_request, handle);
    case 3: return offsetof(struct blkif_request, id);
    case 4: return offsetof(struct blkif_request, sector_number);
    default: return offsetof(struct blkif_request, seg);
    }
}
size_t cref_sizeof_blkif_response(void) { return sizeof(struct blkif_response); }
size_t cref_offsetof_blkif_response(int f) {
    switch (f) {
    case 0: return offsetof(struct blkif_response, id);
    case 1: return offsetof(struct blkif_response, operation);
    default: return offsetof(struct blkif_response, status);
    }
}
size_t cref_sizeof_netif_tx_request(void) { return sizeof(struct netif_tx_request); }
size_t cref_offsetof_netif_tx_request(int f) {
    switch (f) {
    case 0: return offsetof(struct netif_tx_request, gref);
    case 1: return offsetof(struct netif_tx_request, offset);
    case 2: return offsetof(struct netif_tx_request, flags);
    case 3: return offsetof(struct netif_tx_request, id);
    default: return offsetof(struct netif_tx_request, size);
    }
}
size_t cref_sizeof_netif_tx_response(void) { return sizeof(struct netif_tx_response); }
size_t cref_offsetof_netif_tx_response(int f) {
    return f == 0 ? offsetof(struct netif_tx_response, id) : offsetof(struct netif_tx_response, status);
}
size_t cref_sizeof_netif_rx_request(void) { return sizeof(struct netif_rx_request); }
size_t cref_offsetof_netif_rx_request(int f) {
    switch (f) {
    case 0: return offsetof(struct netif_rx_request, id);
    case 1: return offsetof(struct netif_rx_request, pad);
    default: return offsetof(struct netif_rx_request, gref);
    }
}
size_t cref_sizeof_netif_rx_response(void) { return sizeof(struct netif_rx_response); }
size_t cref_offsetof_netif_rx_response(int f) {
    switch (f) {
    case 0: return offsetof(struct netif_rx_response, id);
    case 1: return offsetof(struct netif_rx_response, offset);
    case 2: return offsetof(struct netif_rx_response, flags);
    default: return offsetof(struct netif_rx_response, status);
    }
}

#define CREF_DEFINE(NAME, REQ, RSP)                                                     \
size_t cref_##NAME##_entry_size(void) { return sizeof(union NAME##_sring_entry); }       \
size_t cref_##NAME##_ring_offset(void) { return offsetof(struct NAME##_sring, ring); }   \
unsigned cref_##NAME##_ring_size(void *page, size_t bytes) {                             \
    struct NAME##_sring *s = page;                                                       \
    return __RING_SIZE(s, bytes);                                                        \
}                                                                                        \
unsigned cref_##NAME##_const_ring_size(size_t bytes) {                                   \
    return __CONST_RING_SIZE(NAME, bytes);                                               \
}                                                                                        \
void cref_##NAME##_front_init(cref_##NAME##_t *r, void *page, size_t bytes) {            \
    struct NAME##_sring *s = page;                                                       \
    SHARED_RING_INIT(s);                                                                 \
    FRONT_RING_INIT(&r->front, s, bytes);                                                \
}                                                                                        \
void cref_##NAME##_front_init_at(cref_##NAME##_t *r, void *page, size_t bytes, RING_IDX start) { \
    struct NAME##_sring *s = page;                                                       \
    SHARED_RING_INIT(s);                                                                 \
    s->req_prod = s->rsp_prod = start;                                                   \
    s->req_event = s->rsp_event = start + 1;                                             \
    FRONT_RING_ATTACH(&r->front, s, start, bytes);                                       \
}                                                                                        \
void cref_##NAME##_front_attach(cref_##NAME##_t *r, void *page, size_t bytes, RING_IDX i) { \
    FRONT_RING_ATTACH(&r->front, (struct NAME##_sring *)page, i, bytes);                 \
}                                                                                        \
void cref_##NAME##_back_init(cref_##NAME##_t *r, void *page, size_t bytes) {             \
    BACK_RING_INIT(&r->back, (struct NAME##_sring *)page, bytes);                        \
}                                                                                        \
void cref_##NAME##_back_attach(cref_##NAME##_t *r, void *page, size_t bytes, RING_IDX i) { \
    BACK_RING_ATTACH(&r->back, (struct NAME##_sring *)page, i, bytes);                   \
}                                                                                        \
unsigned cref_##NAME##_front_free(const cref_##NAME##_t *r) { return RING_FREE_REQUESTS(&r->front); } \
int cref_##NAME##_front_full(const cref_##NAME##_t *r) { return RING_FULL(&r->front); }  \
void cref_##NAME##_front_produce(cref_##NAME##_t *r, const REQ *req) {                   \
    /* memcpy, not struct assignment: padding bytes too, so pages compare exactly. */   \
    memcpy(RING_GET_REQUEST(&r->front, r->front.req_prod_pvt), req, sizeof *req);        \
    r->front.req_prod_pvt++;                                                             \
}                                                                                        \
int cref_##NAME##_front_push(cref_##NAME##_t *r) {                                       \
    int notify;                                                                          \
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&r->front, notify);                              \
    return notify;                                                                       \
}                                                                                        \
int cref_##NAME##_front_consume(cref_##NAME##_t *r, RSP *out, int max) {                 \
    RING_IDX rp = r->front.sring->rsp_prod;                                              \
    xen_rmb();                                                                           \
    if (RING_RESPONSE_PROD_OVERFLOW(&r->front, rp)) return -1;                           \
    int n = 0;                                                                           \
    RING_IDX c = r->front.rsp_cons;                                                      \
    while (c != rp && n < max) {                                                         \
        RING_COPY_RESPONSE(&r->front, c, &out[n]);                                       \
        c++; n++;                                                                        \
    }                                                                                    \
    r->front.rsp_cons = c;                                                               \
    return n;                                                                            \
}                                                                                        \
int cref_##NAME##_front_final_check(cref_##NAME##_t *r) {                                \
    int work;                                                                            \
    RING_FINAL_CHECK_FOR_RESPONSES(&r->front, work);                                     \
    return work != 0;                                                                    \
}                                                                                        \
int cref_##NAME##_front_has_unconsumed(cref_##NAME##_t *r) {                             \
    return RING_HAS_UNCONSUMED_RESPONSES(&r->front);                                     \
}                                                                                        \
int cref_##NAME##_response_prod_overflow(const cref_##NAME##_t *r, RING_IDX prod) {      \
    return RING_RESPONSE_PROD_OVERFLOW(&r->front, prod);                                 \
}                                                                                        \
int cref_##NAME##_back_consume(cref_##NAME##_t *r, REQ *out, int max) {                  \
    RING_IDX rp = r->back.sring->req_prod;                                               \
    xen_rmb();                                                                           \
    if (RING_REQUEST_PROD_OVERFLOW(&r->back, rp)) return -1;                             \
    int n = 0;                                                                           \
    RING_IDX c = r->back.req_cons;                                                       \
    while (c != rp && !RING_REQUEST_CONS_OVERFLOW(&r->back, c) && n < max) {             \
        RING_COPY_REQUEST(&r->back, c, &out[n]);                                         \
        c++; n++;                                                                        \
    }                                                                                    \
    r->back.req_cons = c;                                                                \
    return n;                                                                            \
}                                                                                        \
void cref_##NAME##_back_produce(cref_##NAME##_t *r, const RSP *rsp) {                    \
    memcpy(RING_GET_RESPONSE(&r->back, r->back.rsp_prod_pvt), rsp, sizeof *rsp);         \
    r->back.rsp_prod_pvt++;                                                              \
}                                                                                        \
int cref_##NAME##_back_push(cref_##NAME##_t *r) {                                        \
    int notify;                                                                          \
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&r->back, notify);                              \
    return notify;                                                                       \
}                                                                                        \
int cref_##NAME##_back_final_check(cref_##NAME##_t *r) {                                 \
    int work;                                                                            \
    RING_FINAL_CHECK_FOR_REQUESTS(&r->back, work);                                       \
    return work != 0;                                                                    \
}                                                                                        \
unsigned cref_##NAME##_back_has_unconsumed(cref_##NAME##_t *r) {                         \
    return RING_HAS_UNCONSUMED_REQUESTS(&r->back);                                       \
}                                                                                        \
int cref_##NAME##_request_prod_overflow(const cref_##NAME##_t *r, RING_IDX prod) {       \
    return RING_REQUEST_PROD_OVERFLOW(&r->back, prod);                                   \
}                                                                                        \
int cref_##NAME##_request_cons_overflow(const cref_##NAME##_t *r, RING_IDX cons) {       \
    return RING_REQUEST_CONS_OVERFLOW(&r->back, cons);                                   \
}

CREF_DEFINE(blkif, blkif_request_t, blkif_response_t)
CREF_DEFINE(netif_tx, netif_tx_request_t, netif_tx_response_t)
CREF_DEFINE(netif_rx, netif_rx_request_t, netif_rx_response_t)
