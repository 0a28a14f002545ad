/// Key names the drivers read and write, as `io/blkif.h`, `io/netif.h` and `io/xenbus.h` spell them.
public enum XenbusKey {
    // Toolstack layout (both sides).
    /// The device's XenbusState as a decimal (`io/xenbus.h`), one in each half's directory.
    public static let state = "state"
    /// The frontend's pointer to its backend directory, written by the toolstack.
    public static let backend = "backend"
    /// The backend's domain id, in the frontend directory.
    public static let backendID = "backend-id"
    /// The backend's pointer to its frontend directory, written by the toolstack.
    public static let frontend = "frontend"
    /// The frontend's domain id, in the backend directory.
    public static let frontendID = "frontend-id"
    /// "1" while the toolstack wants the device; "0" asks the backend to close once the
    /// frontend has (see ``XenbusToolstack/requestUnplug(_:on:)``).
    public static let online = "online"
    /// The hot-plug script's verdict in the backend directory ("connected" once it ran).
    public static let hotplugStatus = "hotplug-status"

    // Rings (frontend writes).
    /// A one-page ring's grant reference; `ring-ref<N>` for page N of a multi-page blkif ring.
    public static let ringRef = "ring-ref"
    /// The frontend's event channel port for the ring (or for both netif rings without
    /// `feature-split-event-channels`).
    public static let eventChannel = "event-channel"
    /// The frontend's chosen blkif ring size as log2 of its page count (`io/blkif.h`).
    public static let ringPageOrder = "ring-page-order"
    /// The frontend's blkif ring size in pages; deprecated in `io/blkif.h` for `ring-page-order`.
    public static let numRingPages = "num-ring-pages"
    /// The frontend's ring ABI (`protocol`): "x86_32-abi" or "x86_64-abi" (`XEN_IO_PROTO_ABI_*`).
    public static let protocolName = "protocol"
    /// The grant reference of the netif transmit ring's page.
    public static let txRingRef = "tx-ring-ref"
    /// The grant reference of the netif receive ring's page.
    public static let rxRingRef = "rx-ring-ref"
    /// The transmit ring's port when `feature-split-event-channels` is in use.
    public static let eventChannelTx = "event-channel-tx"
    /// The receive ring's port when `feature-split-event-channels` is in use.
    public static let eventChannelRx = "event-channel-rx"
    /// The number of queues the frontend chose, at most the backend's `multi-queue-max-queues`;
    /// each queue's keys then live under `queue-<N>/` (`io/netif.h`).
    public static let multiQueueNumQueues = "multi-queue-num-queues"

    // blkif.h backend features and device properties.
    /// The largest blkif ring the backend accepts, as log2 of its page count (default 0).
    public static let maxRingPageOrder = "max-ring-page-order"
    /// The largest blkif ring the backend accepts, in pages; deprecated for `max-ring-page-order`.
    public static let maxRingPages = "max-ring-pages"
    /// The backend honours `BLKIF_OP_WRITE_BARRIER`.
    public static let featureBarrier = "feature-barrier"
    /// The backend honours `BLKIF_OP_FLUSH_DISKCACHE`.
    public static let featureFlushCache = "feature-flush-cache"
    /// The backend honours `BLKIF_OP_DISCARD`.
    public static let featureDiscard = "feature-discard"
    /// Either side keeps grants mapped across requests (`io/blkif.h`, "feature-persistent"):
    /// the frontend reuses the same grants, the backend maps each once.
    public static let featurePersistent = "feature-persistent"
    /// The most segments the backend takes in one `BLKIF_OP_INDIRECT` request; absent when
    /// indirect requests are not supported.
    public static let featureMaxIndirectSegments = "feature-max-indirect-segments"
    /// The frontend counts sectors in `sector-size` units rather than 512 bytes.
    public static let featureLargeSectorSize = "feature-large-sector-size"
    /// The disk's size in sectors.
    public static let sectors = "sectors"
    /// The logical block size in bytes: a power of two, at least 512.
    public static let sectorSize = "sector-size"
    /// The physical block size in bytes, a multiple of `sector-size` (default: `sector-size`).
    public static let physicalSectorSize = "physical-sector-size"
    /// The disk's `VDISK_*` attribute bits (`VDISK_CDROM`, `VDISK_REMOVABLE`, `VDISK_READONLY`).
    public static let info = "info"
    /// The access the toolstack grants the frontend: "r" (read-only) or "w" (writable).
    public static let mode = "mode"
    /// The toolstack's free-form description of the backing store, for the hot-plug script.
    public static let params = "params"
    /// The kind of backing store: "file", "phy" or "tap" (`io/blkif.h`).
    public static let type = "type"

    // netif.h features.
    /// The vif's MAC address as six colon-separated hex pairs, written by the toolstack.
    public static let mac = "mac"
    /// The vif's number within its frontend domain.
    public static let handle = "handle"
    /// The side accepts packets split over several slots (`NETTXF_more_data`, `NETRXF_more_data`).
    public static let featureSG = "feature-sg"
    /// The side accepts TCPv4 segmentation offload (`XEN_NETIF_GSO_TYPE_TCPV4`).
    public static let featureGSOTCPv4 = "feature-gso-tcpv4"
    /// The side accepts TCPv6 segmentation offload (`XEN_NETIF_GSO_TYPE_TCPV6`).
    public static let featureGSOTCPv6 = "feature-gso-tcpv6"
    /// The backend copies received packets into frontend-granted pages (`GNTTABOP_copy`).
    public static let featureRxCopy = "feature-rx-copy"
    /// The frontend sets `rsp_event` on the receive ring, so the backend may wait for a
    /// notification instead of polling for free slots.
    public static let featureRxNotify = "feature-rx-notify"
    /// "1" turns IPv4 TCP/UDP checksum offload off (it is on by default).
    public static let featureNoCsumOffload = "feature-no-csum-offload"
    /// "1" turns IPv6 TCP/UDP checksum offload on (it is off by default).
    public static let featureIPv6CsumOffload = "feature-ipv6-csum-offload"
    /// The side can use separate event channels for the transmit and receive rings.
    public static let featureSplitEventChannels = "feature-split-event-channels"
    /// The backend offers the netif control ring (`ctrl-ring-ref`, `event-channel-ctrl`).
    public static let featureCtrlRing = "feature-ctrl-ring"
    /// The most queues the backend serves per vif (`io/netif.h`, multi-queue).
    public static let multiQueueMaxQueues = "multi-queue-max-queues"
    /// The frontend asks for copied receive (the only receive mode netback still offers).
    public static let requestRxCopy = "request-rx-copy"
}
