/* Layouts only; SwiftPM needs one source file for a C target. */
#include "CBlkifABI.h"

_Static_assert(sizeof(struct cblkif_x86_32_request) == 108, "i386 blkif_request is 108 bytes");
_Static_assert(sizeof(struct cblkif_x86_32_request_indirect) == 64, "i386 indirect request is 64 bytes");
_Static_assert(sizeof(struct cblkif_x86_32_response) == 12, "i386 blkif_response is 12 bytes");
