#define _GNU_SOURCE
#include "CTap.h"

#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

static int fill_ifreq(struct ifreq *ifr, const char *ifname) {
    memset(ifr, 0, sizeof *ifr);
    if (strlen(ifname) >= IFNAMSIZ) { errno = ENAMETOOLONG; return -1; }
    strncpy(ifr->ifr_name, ifname, IFNAMSIZ - 1);
    return 0;
}

/* An AF_INET datagram socket is the usual handle for interface ioctls. */
static int ifreq_ioctl(unsigned long request, struct ifreq *ifr) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    int r = ioctl(s, request, ifr);
    int saved = errno;
    close(s);
    errno = saved;
    return r;
}

int ctap_open(const char *name, int vnet_hdr, char *name_out) {
    return ctap_open_queue(name, vnet_hdr, 0, name_out);
}

int ctap_open_queue(const char *name, int vnet_hdr, int multi_queue, char *name_out) {
    struct ifreq ifr;
    if (fill_ifreq(&ifr, name) < 0) return -1;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0) | (multi_queue ? IFF_MULTI_QUEUE : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    memcpy(name_out, ifr.ifr_name, IFNAMSIZ);
    return fd;
}

int ctap_set_queue(int fd, int attached) {
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = attached ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
    return ioctl(fd, TUNSETQUEUE, &ifr);
}

int ctap_set_offload(int fd, unsigned int flags) {
    return ioctl(fd, TUNSETOFFLOAD, flags);
}

int ctap_set_up(const char *ifname, int up) {
    struct ifreq ifr;
    if (fill_ifreq(&ifr, ifname) < 0) return -1;
    if (ifreq_ioctl(SIOCGIFFLAGS, &ifr) < 0) return -1;
    if (up) ifr.ifr_flags |= IFF_UP; else ifr.ifr_flags &= ~IFF_UP;
    return ifreq_ioctl(SIOCSIFFLAGS, &ifr);
}

int ctap_set_mtu(const char *ifname, int mtu) {
    struct ifreq ifr;
    if (fill_ifreq(&ifr, ifname) < 0) return -1;
    ifr.ifr_mtu = mtu;
    return ifreq_ioctl(SIOCSIFMTU, &ifr);
}

int ctap_get_mac(const char *ifname, uint8_t *mac) {
    struct ifreq ifr;
    if (fill_ifreq(&ifr, ifname) < 0) return -1;
    if (ifreq_ioctl(SIOCGIFHWADDR, &ifr) < 0) return -1;
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    return 0;
}

int ctap_bridge_add(const char *bridge, const char *ifname) {
    struct ifreq ifr;
    if (fill_ifreq(&ifr, bridge) < 0) return -1;
    unsigned int index = if_nametoindex(ifname);
    if (index == 0) return -1;
    ifr.ifr_ifindex = (int)index;
    return ifreq_ioctl(SIOCBRADDIF, &ifr);
}

int ctap_setns_net(int fd) {
    return setns(fd, CLONE_NEWNET);
}
