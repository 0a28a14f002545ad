// swift-tools-version: 6.1
// XenPV: Xen-style paravirtual split drivers in Swift.
//
// The targets below are declared layer by layer, bottom up, and each layer is a
// folder under Sources/ (the README draws the same picture). A target depends only
// on its own layer and the layers below it; the drivers (7) never import a world
// (5): tests, benchmarks and programs choose the world.
//
//   1-Base         Xen's public headers, typed Xen integers, locks, daemon sockets
//   2-Hypervisor   the hypercall protocols drivers use (grants, event channels, pages)
//   3-Ring         the shared I/O ring of ring.h
//   4-Store        the xenstore client, xenstored, and XenBus (the device handshake)
//   5-Worlds       the hypervisor core: simulated in one process or across processes, or real Xen
//   6-Protocols    blkif and netif requests and responses as validated values; the NBD wire format
//   7-Drivers      the driver runtime, storage engines, TAP devices; blkback/blkfront, netback/netfront
//   8-Toolstack    the embedded host, the demo, the `xenpv` command line
//
// The engines behind `xenpv bench` live in Benchmarks/Engines; the benchmark
// programs of their own (package-benchmark, storage-bench) in the Benchmarks package.
import PackageDescription

let base = "Sources/1-Base/"
let hypervisor = "Sources/2-Hypervisor/"
let ring = "Sources/3-Ring/"
let store = "Sources/4-Store/"
let worlds = "Sources/5-Worlds/"
let protocols = "Sources/6-Protocols/"
let drivers = "Sources/7-Drivers/"
let toolstack = "Sources/8-Toolstack/"
let engines = "Benchmarks/Engines/"

let atomics = Target.Dependency.product(name: "Atomics", package: "swift-atomics")
let systemPackage = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")
let deque = Target.Dependency.product(name: "DequeModule", package: "swift-collections")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")

let package = Package(
    name: "XenPV",
    products: [
        // What programs link: a dom0 program the backends, a guest program the
        // frontends (neither the other side, nor xenstored), plus XenWorld to join
        // the world they run in.
        .library(
            name: "XenPVBackends",
            targets: ["XenNetBack", "XenBlockBack", "XenBlockStorage", "XenNetTap", "XenBus", "XenStore", "XenHypervisor", "XenABI"]),
        .library(
            name: "XenPVFrontends",
            targets: ["XenNetFront", "XenBlockFront", "XenBus", "XenStore", "XenHypervisor", "XenABI"]),
        // Each layer's modules, for programs that need one piece.
        .library(name: "XenABI", targets: ["XenABI"]),
        .library(name: "XenHypervisor", targets: ["XenHypervisor"]),
        .library(name: "XenRing", targets: ["XenRing"]),
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenStoreServer", targets: ["XenStoreServer"]),
        .library(name: "XenBus", targets: ["XenBus"]),
        .library(name: "XenSimulator", targets: ["XenSimulator"]),
        .library(name: "XenSimulatorClient", targets: ["XenSimulatorClient"]),
        .library(name: "XenSimulatorDaemon", targets: ["XenSimulatorDaemon"]),
        .library(name: "XenHost", targets: ["XenHost"]),
        .library(name: "XenWorld", targets: ["XenWorld"]),
        .library(name: "XenBlockProtocol", targets: ["XenBlockProtocol"]),
        .library(name: "XenNetProtocol", targets: ["XenNetProtocol"]),
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
        .library(name: "XenMigrationStream", targets: ["XenMigrationStream"]),
        .library(name: "XenBlockStorage", targets: ["XenBlockStorage"]),
        .library(name: "XenBlockBack", targets: ["XenBlockBack"]),
        .library(name: "XenBlockFront", targets: ["XenBlockFront"]),
        .library(name: "XenNetBack", targets: ["XenNetBack"]),
        .library(name: "XenNetFront", targets: ["XenNetFront"]),
        .library(name: "XenBlockExport", targets: ["XenBlockExport"]),
        .library(name: "XenBlockFUSE", targets: ["XenBlockFUSE"]),
        // A whole host in one process (hypervisor, xenstored, backends) for a program
        // that plays both sides, as `xenpv demo` does.
        .library(name: "XenEmbeddedHost", targets: ["XenEmbeddedHost"]),
        // Domain configs in xl.cfg syntax, for a toolstack.
        .library(name: "XenToolstack", targets: ["XenToolstack"]),
        .executable(name: "xenpv", targets: ["xenpv"]),
        // The one benchmark engine a package outside this one runs: the
        // package-benchmark target in Benchmarks/ cannot reach a non-product.
        .library(name: "XenRingBenchmark", targets: ["XenRingBenchmark"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        // Documentation only (`swift package generate-documentation`, Scripts/build-docs.sh);
        // no target depends on it.
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        // MARK: 1-Base

        // Xen's public headers with user-space barriers, plus C shims for what
        // Swift cannot import (macros, variadic syscalls, GNU-only calls).
        .target(name: "CXen", path: base + "CXen"),
        // Xen's user-space libraries (libxengnttab, libxengntshr, libxenevtchn, libxenstore).
        .systemLibrary(name: "CXenLibs", path: base + "CXenLibs"),
        // Typed Xen integers: domain ids, frames, grant refs, ports, ring indices, XenbusState.
        .target(name: "XenABI", dependencies: ["CXen"], path: base + "XenABI"),
        // TSan-visible pthread locks.
        .target(name: "XenLocks", dependencies: ["CXen"], path: base + "XenLocks"),
        // The daemons' sockets: fixed modes, no abstract names, peer credentials.
        .target(name: "XenSockets", dependencies: ["CXen", systemPackage], path: base + "XenSockets"),

        // MARK: 2-Hypervisor

        // The protocols drivers use: Hypervisor, GrantSharer, GrantMapper, EventChannels, PageAllocator.
        .target(name: "XenHypervisor", dependencies: ["XenABI", systemPackage], path: hypervisor + "XenHypervisor"),

        // MARK: 3-Ring

        // FrontRing / BackRing, byte for byte ring.h.
        .target(name: "XenRing", dependencies: ["XenABI", "CXen", "XenHypervisor", atomics], path: ring + "XenRing"),

        // MARK: 4-Store

        // The xenstore client (what drivers, guests and tools link: messages, paths,
        // permissions, transports incl. a guest's ring) and xenstored (engine, tree,
        // quotas, the epoll loop), which only dom0-side programs link.
        .target(name: "XenStore", dependencies: ["XenLocks", "XenABI", "CXen", "XenHypervisor", atomics], path: store + "XenStore"),
        .target(
            name: "XenStoreServer",
            dependencies: ["XenStore", "XenLocks", "XenSockets", "XenABI", "CXen", "XenHypervisor", atomics, systemPackage, logging, deque],
            path: store + "XenStoreServer"),
        // The XenBus handshake, the backend device manager, the toolstack layout, checked store values.
        .target(name: "XenBus", dependencies: ["XenStore", "XenHypervisor", "XenABI", "XenLocks", logging], path: store + "XenBus"),

        // MARK: 5-Worlds

        // Write tracking for log-dirty: userfaultfd asynchronous write-protect and
        // PAGEMAP_SCAN (ioctls whose numbers and structs this system's headers lack).
        .target(name: "CPageTracking", path: worlds + "CPageTracking"),
        // In one process: the simulated hypervisor (domains with memfd-backed
        // frames, v1 grant tables, 2-level event channels, leftovers).
        .target(
            name: "XenSimulator",
            dependencies: ["XenLocks", "XenHypervisor", "XenABI", "CXen", "CPageTracking", atomics, systemPackage],
            path: worlds + "XenSimulator"),
        // Across processes: what a process links to join the daemon (`RemoteHypervisor`
        // and the wire format; a guest program links this, not the daemon or its
        // xenstored), and the daemon itself (`xenpv hypervisor`).
        .target(
            name: "XenSimulatorClient",
            dependencies: ["XenLocks", "XenHypervisor", "XenABI", "CXen", "CPageTracking", "XenStore", atomics, systemPackage],
            path: worlds + "XenSimulatorClient"),
        .target(
            name: "XenSimulatorDaemon",
            dependencies: [
                "XenLocks", "XenSimulatorClient", "XenSimulator", "XenHypervisor", "XenABI", "CXen",
                "XenStore", "XenStoreServer", "XenBus", "XenSockets", atomics, systemPackage, logging,
            ],
            path: worlds + "XenSimulatorDaemon"),
        // Real Xen: the hypervisor protocols on Xen's own libraries, every call
        // through one replaceable funnel (LibXen).
        .target(
            name: "XenHost",
            dependencies: ["CXenLibs", "XenHypervisor", "XenABI", "XenStore", "XenLocks", "CXen", systemPackage],
            path: worlds + "XenHost"),
        // The world a process joins, chosen at start-up: what the CLI and the
        // example programs share, so that neither writes the choice again.
        .target(
            name: "XenWorld",
            dependencies: ["XenABI", "XenBus", "XenHost", "XenHypervisor", "XenLocks", "XenSimulatorClient", "XenStore"],
            path: worlds + "XenWorld"),

        // MARK: 6-Protocols

        // blkif: the x86_32-abi ring layouts (packed, as Linux blkback defines them),
        // and requests and responses of both ABIs as validated Swift values.
        .target(name: "CBlkifABI", dependencies: ["CXen"], path: protocols + "CBlkifABI"),
        .target(name: "XenBlockProtocol", dependencies: ["XenABI", "CXen", "CBlkifABI"], path: protocols + "XenBlockProtocol"),
        // netif requests and responses as Swift values, the tx and rx packet parsers.
        .target(name: "XenNetProtocol", dependencies: ["XenABI", "CXen"], path: protocols + "XenNetProtocol"),
        // The NBD protocol's wire format (proto.md): handshake, options, requests, simple replies.
        .target(name: "NBDProtocol", dependencies: ["XenABI"], path: protocols + "NBDProtocol"),
        // CRC-32C with the CPU's crc32 instruction (x86-64 SSE4.2), for the stream's checksums.
        .target(name: "CCRC32C", path: protocols + "CCRC32C"),
        // The migration stream: a versioned header and checksummed, length-checked records
        // (pages, grants, event channels, store entries, devices) that save, restore and migrate carry.
        .target(name: "XenMigrationStream", dependencies: ["XenABI", "CCRC32C"], path: protocols + "XenMigrationStream"),

        // MARK: 7-Drivers

        // What every driver queue thread does the same way: the thread, stop on every
        // turn, spin then sleep, the event channel, failures, counters, eventfds.
        .target(
            name: "XenDriverRuntime",
            dependencies: ["CXen", "XenLocks", "XenHypervisor", "XenABI", atomics],
            path: drivers + "XenDriverRuntime"),
        // Block storage engines: libaio (no pkg-config file; the module map links it
        // by name), syscall shims (GNU-only calls, ioctls, static inlines), the engines.
        .systemLibrary(name: "CAIO", path: drivers + "CAIO"),
        .target(name: "CBlockStorage", dependencies: ["CAIO"], path: drivers + "CBlockStorage"),
        // io_uring: liburing (Debian's liburing-dev, with a pkg-config file) and the C glue
        // that keeps its static inlines and ring structures out of Swift.
        .systemLibrary(name: "CUring", path: drivers + "CUring", pkgConfig: "liburing",
                       providers: [.apt(["liburing-dev"])]),
        .target(name: "CUringStorage", dependencies: ["CUring"], path: drivers + "CUringStorage"),
        .target(name: "XenBlockStorage", dependencies: ["CAIO", "CXen", "CBlockStorage", "CUringStorage", "NBDProtocol", "XenLocks", "XenSockets", systemPackage],
                path: drivers + "XenBlockStorage"),
        // Block drivers: blkback (dom0) and blkfront (guest).
        .target(
            name: "XenBlockBack",
            dependencies: [
                "XenDriverRuntime", "XenBlockProtocol", "XenBlockStorage", "XenRing", "XenHypervisor", "XenABI", "CXen",
                "XenBus", "XenStore", "XenLocks", atomics, logging,
            ],
            path: drivers + "XenBlockBack"),
        .target(
            name: "XenBlockFront",
            dependencies: [
                "XenDriverRuntime", "XenBlockProtocol", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore",
                "XenLocks", "XenSockets", atomics, deque, logging,
            ],
            path: drivers + "XenBlockFront"),
        // A block device (a guest's blkfront, or memory) served as an NBD export.
        .target(
            name: "XenBlockExport",
            dependencies: ["NBDProtocol", "XenBlockFront", "XenSockets", "XenLocks", atomics, deque, logging],
            path: drivers + "XenBlockExport"),
        // A block device as one file in a FUSE mount: libfuse3 (Debian's libfuse3-dev) and the
        // C glue that keeps its structures and replies out of Swift.
        .systemLibrary(name: "CFuse", path: drivers + "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .target(name: "CFuseFile", dependencies: ["CFuse"], path: drivers + "CFuseFile"),
        .target(name: "XenBlockFUSE", dependencies: ["CFuseFile", "XenBlockExport", "NBDProtocol", "XenLocks", "XenABI", systemPackage],
                path: drivers + "XenBlockFUSE"),
        // Network attachment: TAP devices on Linux bridges, in namespaces.
        .target(name: "CTap", path: drivers + "CTap"),
        .target(name: "XenNetTap", dependencies: ["CTap", "XenNetProtocol", systemPackage], path: drivers + "XenNetTap"),
        // Network drivers: netback (dom0) and netfront (guest).
        .target(
            name: "XenNetBack",
            dependencies: [
                "XenDriverRuntime", "XenNetProtocol", "XenNetTap", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus",
                "XenStore", "XenLocks", atomics, deque, logging,
            ],
            path: drivers + "XenNetBack"),
        .target(
            name: "XenNetFront",
            dependencies: [
                "XenDriverRuntime", "XenNetProtocol", "XenNetTap", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus",
                "XenStore", "XenLocks", deque, logging,
            ],
            path: drivers + "XenNetFront"),

        // MARK: 8-Toolstack

        // One process playing a whole host: the simulator, xenstored, netback and blkback.
        .target(
            name: "XenEmbeddedHost",
            dependencies: [
                "XenSimulator", "XenStore", "XenStoreServer", "XenBus", "XenNetBack", "XenBlockBack", "XenBlockStorage",
                "NBDProtocol", "XenHypervisor", "XenABI", logging, systemPackage,
            ],
            path: toolstack + "XenEmbeddedHost"),
        // `xenpv demo`: a guest's disk and NIC on the embedded host, as a library the tests run too.
        .target(
            name: "XenDemo",
            dependencies: [
                "XenEmbeddedHost", "XenSimulator", "XenStore", "XenBus", "XenNetBack", "XenNetFront", "XenBlockFront",
                "XenHypervisor", "XenABI", logging, systemPackage,
            ],
            path: toolstack + "XenDemo"),
        // Domain configs in xl.cfg syntax: the file parser, DomainConfig, disk and vif specs.
        .target(
            name: "XenToolstack",
            dependencies: ["XenABI", "CXen", "XenLocks", "XenNetProtocol", "NBDProtocol", "XenStore", "XenBus", "XenSimulatorClient",
                           "XenMigrationStream", "XenHypervisor"],
            path: toolstack + "XenToolstack"),
        // The `xenpv` command line, one file per command.
        .executableTarget(
            name: "xenpv",
            dependencies: [
                "XenDemo", "XenWorld", "XenSimulator", "XenSimulatorDaemon", "XenSimulatorClient", "XenHost",
                "XenStore", "XenStoreServer", "XenBus", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenLocks",
                "XenNetBack", "XenNetFront", "XenBlockBack", "XenBlockFront", "XenBlockStorage", "XenBlockExport", "XenBlockFUSE",
                "XenRingBenchmark", "XenNetBenchmark", "XenBlockBenchmark", "XenStoreBenchmark", "XenToolstack", "NBDProtocol",
                logging, argumentParser, systemPackage,
            ],
            path: toolstack + "xenpv"),

        // MARK: Benchmark engines (`xenpv bench`)

        .target(
            name: "XenRingBenchmark",
            dependencies: ["XenRing", "XenHypervisor", "XenABI", "CXen", atomics],
            path: engines + "XenRingBenchmark"),
        .target(
            name: "XenNetBenchmark",
            dependencies: [
                "XenNetBack", "XenNetFront", "XenNetProtocol", "XenNetTap", "XenRing", "XenSimulator", "XenHypervisor",
                "XenABI", "CXen", atomics, systemPackage,
            ],
            path: engines + "XenNetBenchmark"),
        .target(
            name: "XenBlockBenchmark",
            dependencies: [
                "XenBlockBack", "XenBlockFront", "XenBlockProtocol", "XenBlockStorage", "XenSimulator", "XenHypervisor", "XenABI",
                "NBDProtocol", "XenLocks",
            ],
            path: engines + "XenBlockBenchmark"),
        .target(
            name: "XenStoreBenchmark",
            dependencies: ["XenStoreServer", "XenStore", logging],
            path: engines + "XenStoreBenchmark"),

        // MARK: Test support (Tests/, not products)

        // For every test target (Foundation only): the seeded generator, waiting on a
        // condition with a deadline, timeouts, temporary directories and images.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // What the block and net driver tests share: a hostile flooding frontend's
        // thread, a raw frontend that pushes hostile slots, a grant mapper that watches
        // unmaps, a hypervisor that holds its callers at a gate, a log that counts lines.
        .target(
            name: "DriverTestSupport",
            dependencies: ["XenHypervisor", "XenABI", "XenLocks", "XenRing", "TestSupport", logging],
            path: "Tests/DriverTestSupport"),
        .target(name: "NetTestSupport", dependencies: ["TestSupport"], path: "Tests/NetTestSupport"),
        // What the tests of a guest's disk views (NBD export, FUSE file) share: a vbd on an
        // image through an embedded host, and real tools run without blocking the pool.
        .target(
            name: "BlockViewTestSupport",
            dependencies: ["XenEmbeddedHost", "XenBlockFront", "XenBus", "XenHypervisor", "XenSimulator", "XenNetBack",
                           "TestSupport", logging],
            path: "Tests/BlockViewTestSupport"),
        // ring.h's own macros, to prove XenRing against them.
        .target(name: "CRingReference", dependencies: ["CXen"], path: "Tests/CRingReference"),
        // blkif.h's offsetof/sizeof and slots filled through C field names.
        .target(name: "CBlkifProbe", dependencies: ["CXen", "CBlkifABI"], path: "Tests/CBlkifProbe"),
        // Counts this thread's allocations (interposes malloc) for hot-path tests.
        .target(name: "CMallocCounter", path: "Tests/CMallocCounter"),
        // A file's dirty pages in the page cache (cachestat), for the engines' flush on close.
        .target(name: "CPageCacheProbe", path: "Tests/CPageCacheProbe"),

        // MARK: Tests, layer by layer

        .testTarget(name: "XenABITests", dependencies: ["XenABI", "CXen"]),
        .testTarget(name: "XenSocketsTests", dependencies: ["XenSockets", "TestSupport"]),
        .testTarget(
            name: "XenRingTests",
            dependencies: ["XenRing", "CRingReference", "CXen", "XenABI", "XenHypervisor", "TestSupport", atomics]),
        .testTarget(
            name: "XenStoreTests",
            dependencies: ["XenStore", "XenStoreServer", "XenABI", "CXen", "XenHypervisor", "XenSimulator", "TestSupport", logging]),
        .testTarget(
            name: "XenBusTests",
            dependencies: ["XenBus", "XenStore", "XenStoreServer", "XenABI", "XenHypervisor", "TestSupport", "XenLocks", logging]),
        .testTarget(
            name: "XenSimulatorTests",
            dependencies: ["XenSimulator", "XenHypervisor", "XenABI", "CXen", atomics, systemPackage]),
        .testTarget(
            name: "XenHostTests",
            dependencies: [
                "XenHost", "XenHypervisor", "XenABI", "CXenLibs", "CXen", "XenStore", "XenStoreServer", "XenBus",
                "XenSimulator", "XenNetBack", "XenNetFront", "TestSupport", logging,
            ]),
        // Across processes: the daemon, its clients, and the `xenpv` commands run as processes.
        .testTarget(
            name: "XenProcessTests",
            dependencies: [
                "XenSimulatorDaemon", "XenSimulatorClient", "XenSimulator", "XenHypervisor", "XenABI", "CXen", "XenStore",
                "XenRingBenchmark", "XenWorld", "XenToolstack", "XenBus", "XenLocks", "xenpv", "TestSupport", "NetTestSupport", logging,
            ]),
        .testTarget(
            name: "XenBlockProtocolTests",
            dependencies: ["XenBlockProtocol", "XenABI", "CXen", "CBlkifABI", "CBlkifProbe", "CMallocCounter", "TestSupport"]),
        .testTarget(name: "XenNetProtocolTests", dependencies: ["XenNetProtocol", "XenABI", "CXen"]),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"]),
        .testTarget(name: "XenMigrationStreamTests", dependencies: ["XenMigrationStream", "XenABI"]),
        .testTarget(
            name: "XenDriverRuntimeTests",
            dependencies: ["XenDriverRuntime", "XenSimulator", "XenHypervisor", "XenABI", "XenLocks"]),
        .testTarget(name: "XenBlockStorageTests", dependencies: ["XenBlockStorage", "NBDProtocol", "XenSockets", "CUringStorage", "CMallocCounter", "CPageCacheProbe", "TestSupport", systemPackage]),
        .testTarget(
            name: "XenBlockDriverTests",
            dependencies: [
                "XenBlockBack", "XenBlockFront", "XenBlockBenchmark", "XenBlockProtocol", "XenBlockStorage", "XenRing",
                "XenSimulator", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore", "XenStoreServer", "XenLocks",
                "XenDriverRuntime", "DriverTestSupport", "TestSupport", logging, systemPackage,
            ]),
        .testTarget(
            name: "XenBlockExportTests",
            dependencies: [
                "XenBlockExport", "NBDProtocol", "XenEmbeddedHost", "XenBlockFront", "XenBus", "XenStore", "XenSimulator",
                "XenNetBack", "XenHypervisor", "XenABI", "BlockViewTestSupport", "TestSupport", logging, systemPackage,
            ]),
        .testTarget(
            name: "XenBlockFUSETests",
            dependencies: [
                "XenBlockFUSE", "XenBlockExport", "NBDProtocol", "XenEmbeddedHost", "XenBlockFront", "XenBus", "XenStore",
                "XenSimulator", "XenNetBack", "XenHypervisor", "XenABI", "XenLocks", "BlockViewTestSupport", "TestSupport", logging,
                systemPackage,
            ]),
        .testTarget(name: "XenNetTapTests", dependencies: ["XenNetTap", "XenNetProtocol", "CTap", "NetTestSupport"]),
        .testTarget(
            name: "XenNetDriverTests",
            dependencies: [
                "XenNetBack", "XenNetFront", "XenNetProtocol", "XenNetTap", "XenRing", "XenSimulator", "XenHypervisor",
                "XenABI", "CXen", "NetTestSupport", "DriverTestSupport", "XenBus", "XenStore", "XenStoreServer", "XenLocks",
                "XenDriverRuntime", "TestSupport", logging,
            ]),
        .testTarget(name: "XenDemoTests", dependencies: ["XenDemo"]),
        .testTarget(name: "XenToolstackTests", dependencies: ["XenToolstack", "XenNetProtocol", "XenStore", "XenStoreServer", "XenBus", "XenMigrationStream", "XenABI", "TestSupport", logging]),
        // Runs the built `xenpv` as a user would; depending on it makes `swift test` build it.
        .testTarget(name: "XenPVCommandTests", dependencies: ["xenpv", "TestSupport"]),
        .testTarget(name: "XenRingBenchmarkTests", dependencies: ["XenRingBenchmark", "XenSimulator", "XenABI"]),
    ]
)
