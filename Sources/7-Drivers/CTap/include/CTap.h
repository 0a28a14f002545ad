/*
 * CTap: the Linux calls behind a TAP attachment, which Swift cannot make
 * itself (ioctl is variadic; struct ifreq is a union; setns is GNU-only).
 * Each returns 0 (or a descriptor) on success, -1 with errno on failure.
 */
#ifndef CTAP_H
#define CTAP_H

#include <stdint.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>

/* Opens /dev/net/tun as a TAP (IFF_TAP | IFF_NO_PI, plus IFF_VNET_HDR when
 * vnet_hdr) named `name` ("" lets the kernel choose); non-blocking, close-on-exec.
 * The name the kernel gave is written to name_out (IFNAMSIZ bytes). */
int ctap_open(const char *name, int vnet_hdr, char *name_out);
/* ctap_open, and with multi_queue one queue of a multi-queue TAP (IFF_MULTI_QUEUE): the
 * first open makes the device, each further open of the same name adds a queue, and the
 * kernel steers each flow it sends to one queue. */
int ctap_open_queue(const char *name, int vnet_hdr, int multi_queue, char *name_out);
/* TUNSETQUEUE: attaches (1) or detaches (0) a multi-queue TAP's queue; the kernel steers
 * nothing to a detached queue. */
int ctap_set_queue(int fd, int attached);
/* TUNSETOFFLOAD with TUN_F_* flags: what the reader can take unsegmented. */
int ctap_set_offload(int fd, unsigned int flags);
/* Brings an interface up or down (SIOCSIFFLAGS). */
int ctap_set_up(const char *ifname, int up);
/* Sets an interface's MTU (SIOCSIFMTU). */
int ctap_set_mtu(const char *ifname, int mtu);
/* Reads an interface's MAC address (SIOCGIFHWADDR) into mac[6]. */
int ctap_get_mac(const char *ifname, uint8_t *mac);
/* Enslaves ifname to a Linux bridge (SIOCBRADDIF), as Xen's vif-bridge does. */
int ctap_bridge_add(const char *bridge, const char *ifname);
/* Moves the calling thread into the network namespace open at fd (setns). */
int ctap_setns_net(int fd);

#endif
