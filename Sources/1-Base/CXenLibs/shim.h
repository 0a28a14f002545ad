/* Xen's user-space libraries from libxen-dev: grant mapping and sharing,
 * event channels, the store client. The interface version must equal CXen's
 * (CXen.h), or the public structs these headers pull in differ between the
 * two modules. */
#ifndef __XEN_INTERFACE_VERSION__
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#endif
#include <xengnttab.h>
#include <xenevtchn.h>
#include <xenstore.h>
