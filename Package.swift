// swift-tools-version: 6.1
// XenPV: Xen-style paravirtual split drivers in Swift. See DESIGN.md in
// ../shared and the README for the layers; each arrow below points down only.
import PackageDescription

let package = Package(
    name: "XenPV",
    products: [
        // What programs link: a dom0 program the backends, a guest program the
        // frontends (neither the other side), plus the world they run in.
        .library(
            name: "XenPVBackends",
            targets: ["XenNetBack", "XenBlockBack", "XenBlockStorage", "XenNetTap", "XenBus", "XenStore", "XenHypervisor", "XenABI"]),
        .library(
            name: "XenPVFrontends",
            targets: ["XenNetFront", "XenBlockFront", "XenBus", "XenStore", "XenHypervisor", "XenABI"]),
        .library(name: "XenABI", targets: ["XenABI"]),
        .library(name: "XenHypervisor", targets: ["XenHypervisor"]),
        .library(name: "XenSimulator", targets: ["XenSimulator"]),
        .library(name: "XenRing", targets: ["XenRing"]),
        .library(name: "XenRingBenchmark", targets: ["XenRingBenchmark"]),
        .executable(name: "xenpv", targets: ["xenpv"]),
        .library(name: "XenNetProtocol", targets: ["XenNetProtocol"]),
        .library(name: "XenHost", targets: ["XenHost"]),
        // The store client, the store daemon, and the device handshake.
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenStoreServer", targets: ["XenStoreServer"]),
        .library(name: "XenBus", targets: ["XenBus"]),
        // Block: protocol and storage engines.
        .library(name: "XenBlockProtocol", targets: ["XenBlockProtocol"]),
        .library(name: "XenBlockStorage", targets: ["XenBlockStorage"]),
        // Block: the split drivers and their benchmark engine.
        .library(name: "XenBlockBack", targets: ["XenBlockBack"]),
        .library(name: "XenBlockFront", targets: ["XenBlockFront"]),
        .library(name: "XenBlockBenchmark", targets: ["XenBlockBenchmark"]),
        // Across processes: the hypervisor daemon and its client.
        .library(name: "XenSimulatorDaemon", targets: ["XenSimulatorDaemon"]),
        .library(name: "XenSimulatorClient", targets: ["XenSimulatorClient"]),
        // Choosing the world at start-up: the daemon's simulator or real Xen.
        .library(name: "XenWorld", targets: ["XenWorld"]),
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
        // Layer 1: Xen's public headers with user-space barriers, plus C shims
        // for what Swift cannot import (macros, variadic syscalls, GNU-only calls).
        .target(name: "CXen"),
        // libaio has no pkg-config file; the module map links it by name.
        .systemLibrary(name: "CAIO"),

        // TSan-visible pthread locks.
        .target(name: "XenLocks", dependencies: ["CXen"]),

        // The daemons' sockets: fixed modes, no abstract names, peer credentials.
        .target(name: "XenSockets", dependencies: ["CXen", .product(name: "SystemPackage", package: "swift-system")]),
        .testTarget(name: "XenSocketsTests", dependencies: ["XenSockets", "TestSupport"]),

        // Layer 2: typed Xen integers and the hypercall protocols drivers use.
        .target(name: "XenABI", dependencies: ["CXen"]),
        .target(
            name: "XenHypervisor",
            dependencies: [
                "XenABI",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        .testTarget(name: "XenABITests", dependencies: ["XenABI", "CXen"]),

        // What every driver queue thread does the same way: the thread, stop on every
        // turn, spin then sleep, the event channel, failures, counters, eventfds.
        .target(
            name: "XenDriverRuntime",
            dependencies: [
                "CXen", "XenLocks", "XenHypervisor", "XenABI",
                .product(name: "Atomics", package: "swift-atomics"),
            ]),
        .testTarget(
            name: "XenDriverRuntimeTests",
            dependencies: ["XenDriverRuntime", "XenSimulator", "XenHypervisor", "XenABI", "XenLocks"]),

        // Layer 2, the embedded world: the simulated hypervisor (domains with
        // memfd-backed frames, v1 grant tables, 2-level event channels, leftovers).
        .target(
            name: "XenSimulator",
            dependencies: [
                "XenLocks",
                "XenHypervisor", "XenABI", "CXen",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "XenSimulatorTests",
            dependencies: [
                "XenSimulator", "XenHypervisor", "XenABI", "CXen",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        // Layer 3: the shared ring, proven against ring.h's own
        // macros in a test-only C target (not a product).
        .target(
            name: "XenRing",
            dependencies: [
                "XenABI", "CXen", "XenHypervisor",
                .product(name: "Atomics", package: "swift-atomics"),
            ]),
        .target(name: "CRingReference", dependencies: ["CXen"], path: "Tests/CRingReference"),
        // The ring-throughput benchmark engine, shared by `xenpv bench
        // ring` and the package-benchmark target in Benchmarks/.
        .target(
            name: "XenRingBenchmark",
            dependencies: [
                "XenRing", "XenHypervisor", "XenABI", "CXen",
                .product(name: "Atomics", package: "swift-atomics"),
            ]),
        .testTarget(
            name: "XenRingTests",
            dependencies: [
                "XenRing", "CRingReference", "CXen", "XenABI", "XenHypervisor", "TestSupport",
                .product(name: "Atomics", package: "swift-atomics"),
            ]),

        // Layer 7: the `xenpv` command line (one file per command under Sources/xenpv).
        // The embedded host and `xenpv demo`, as a library the tests run too.
        .target(
            name: "XenDemo",
            dependencies: [
                "XenSimulator", "XenStore", "XenStoreServer", "XenBus", "XenNetBack", "XenNetFront", "XenHypervisor", "XenABI",
                "XenBlockBack", "XenBlockFront", "XenBlockStorage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(name: "XenDemoTests", dependencies: ["XenDemo"]),
        // Runs the built `xenpv` as a user would; depending on it makes `swift test` build it.
        .testTarget(name: "XenPVCommandTests", dependencies: ["xenpv", "TestSupport"]),
        // The netif ring-pair benchmark engine behind `xenpv bench net`.
        .target(
            name: "XenNetBenchmark",
            dependencies: [
                "XenNetBack", "XenNetFront", "XenNetProtocol", "XenNetTap", "XenRing", "XenSimulator", "XenHypervisor",
                "XenABI", "CXen",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .executableTarget(
            name: "xenpv",
            dependencies: [
                "XenRingBenchmark", "XenSimulator", "XenDemo", "XenNetBenchmark", "XenStore", "XenStoreServer", "XenABI", "XenBus", "XenHost",
                "XenBlockBenchmark", "XenStoreBenchmark",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // Across processes: hypervisor, backend and guest commands.
                "XenSimulatorDaemon", "XenSimulatorClient", "XenNetBack", "XenNetFront", "XenRing", "XenHypervisor", "CXen",
                "XenBlockBack", "XenBlockFront", "XenBlockStorage", "XenWorld",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "XenRingBenchmarkTests",
            dependencies: ["XenRingBenchmark", "XenSimulator", "XenABI"]),

        // Layer 5, network: netif requests and responses as Swift values.
        .target(name: "XenNetProtocol", dependencies: ["XenABI", "CXen"]),
        .testTarget(name: "XenNetProtocolTests", dependencies: ["XenNetProtocol", "XenABI", "CXen"]),
        // Layer 6, network attachment: TAP devices on Linux bridges, in namespaces.
        .target(name: "CTap"),
        .target(
            name: "XenNetTap",
            dependencies: ["CTap", "XenNetProtocol", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "NetTestSupport", dependencies: ["TestSupport"], path: "Tests/NetTestSupport"),
        // Test-only, for every test target (Foundation only): the seeded generator,
        // waiting on a condition with a deadline, timeouts, temporary directories and images.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        // Test-only: what the block and net driver tests share (a hostile flooding
        // frontend's thread, a raw frontend that pushes hostile slots, a grant mapper
        // that watches unmaps, a log that counts lines).
        .target(
            name: "DriverTestSupport",
            dependencies: ["XenHypervisor", "XenABI", "XenLocks", "XenRing", "TestSupport", .product(name: "Logging", package: "swift-log")],
            path: "Tests/DriverTestSupport"),
        .testTarget(name: "XenNetTapTests", dependencies: ["XenNetTap", "XenNetProtocol", "CTap", "NetTestSupport"]),
        // Layer 6, network drivers: netback (dom0) and netfront (guest).
        .target(
            name: "XenNetBack",
            dependencies: [
                "XenDriverRuntime", "XenNetProtocol", "XenNetTap", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore", "XenLocks",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "XenNetFront",
            dependencies: [
                "XenDriverRuntime", "XenNetProtocol", "XenNetTap", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore", "XenLocks",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "XenNetDriverTests",
            dependencies: [
                "XenNetBack", "XenNetFront", "XenNetProtocol", "XenNetTap", "XenRing", "XenSimulator", "XenHypervisor",
                "XenABI", "CXen", "NetTestSupport", "DriverTestSupport", "XenBus", "XenStore", "XenStoreServer", "XenLocks", "XenDriverRuntime", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),

        // The real-Xen world: the hypervisor protocols on Xen's own libraries,
        // every call through one replaceable funnel (LibXen).
        .systemLibrary(name: "CXenLibs"),
        .target(
            name: "XenHost",
            dependencies: [
                "CXenLibs", "XenHypervisor", "XenABI", "XenStore", "CXen",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // The world a process joins, chosen at start-up: what the CLI and the
        // example programs share, so that neither writes the choice again.
        .target(
            name: "XenWorld",
            dependencies: ["XenABI", "XenBus", "XenHost", "XenHypervisor", "XenSimulatorClient", "XenStore"]),
        .testTarget(
            name: "XenHostTests",
            dependencies: ["XenHost", "XenHypervisor", "XenABI", "CXenLibs", "CXen", "XenStore", "XenStoreServer", "XenBus",
                           "XenSimulator", "XenNetBack", "XenNetFront", "TestSupport",
                           .product(name: "Logging", package: "swift-log")]),

        // Layer 4: XenStore and XenBus. The client (what drivers, guests and tools link:
        // messages, paths, permissions, transports incl. a guest's ring) and xenstored
        // (engine, tree, quotas, the epoll loop), which only dom0-side programs link.
        .target(
            name: "XenStore",
            dependencies: [
                "XenLocks",
                "XenABI", "CXen", "XenHypervisor",
                .product(name: "Atomics", package: "swift-atomics"),
            ]),
        .target(
            name: "XenStoreServer",
            dependencies: [
                "XenStore", "XenLocks", "XenSockets",
                "XenABI", "CXen", "XenHypervisor",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]),
        .target(
            name: "XenBus",
            dependencies: ["XenStore", "XenABI", "XenLocks", .product(name: "Logging", package: "swift-log")]),
        // The store benchmark engine behind `xenpv bench xenstore`.
        .target(
            name: "XenStoreBenchmark",
            dependencies: ["XenStoreServer", "XenStore", .product(name: "Logging", package: "swift-log")]),
        .testTarget(
            name: "XenStoreTests",
            dependencies: [
                "XenStore", "XenStoreServer", "XenABI", "CXen", "XenHypervisor", "XenSimulator", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "XenBusTests",
            dependencies: ["XenBus", "XenStore", "XenStoreServer", "XenABI", "TestSupport", .product(name: "Logging", package: "swift-log")]),

        // Layers 5 and 6, block: blkif protocol, storage engines, drivers.
        // The x86_32-abi ring layouts (packed, as Linux blkback defines them).
        .target(name: "CBlkifABI", dependencies: ["CXen"]),
        .target(name: "XenBlockProtocol", dependencies: ["XenABI", "CXen", "CBlkifABI"]),
        // Test-only C: counts this thread's allocations (interposes malloc) for hot-path tests.
        .target(name: "CMallocCounter", path: "Tests/CMallocCounter"),
        // Test-only C: offsetof/sizeof and slots filled through C field names.
        .target(name: "CBlkifProbe", dependencies: ["CXen", "CBlkifABI"], path: "Tests/CBlkifProbe"),
        .testTarget(
            name: "XenBlockProtocolTests",
            dependencies: ["XenBlockProtocol", "XenABI", "CXen", "CBlkifABI", "CBlkifProbe", "CMallocCounter", "TestSupport"]),
        // Syscall shims for the storage engines (GNU-only calls, ioctls, static inlines).
        .target(name: "CBlockStorage", dependencies: ["CAIO"]),
        .target(
            name: "XenBlockStorage",
            dependencies: [
                "CAIO", "CXen", "CBlockStorage",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .testTarget(
            name: "XenBlockStorageTests",
            dependencies: [
                "XenBlockStorage", "CMallocCounter", "TestSupport",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // Block drivers: blkback (dom0) and blkfront (guest), and the benchmark engine.
        .target(
            name: "XenBlockBack",
            dependencies: [
                "XenDriverRuntime", "XenBlockProtocol", "XenBlockStorage", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore", "XenLocks",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "XenBlockFront",
            dependencies: [
                "XenDriverRuntime", "XenBlockProtocol", "XenRing", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore", "XenLocks",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "XenBlockBenchmark",
            dependencies: ["XenBlockBack", "XenBlockFront", "XenBlockProtocol", "XenBlockStorage", "XenSimulator",
                           "XenHypervisor", "XenABI"]),
        .testTarget(
            name: "XenBlockDriverTests",
            dependencies: [
                "XenBlockBack", "XenBlockFront", "XenBlockBenchmark", "XenBlockProtocol", "XenBlockStorage", "XenRing",
                "XenSimulator", "XenHypervisor", "XenABI", "CXen", "XenBus", "XenStore", "XenStoreServer", "XenLocks", "XenDriverRuntime",
                "DriverTestSupport", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        // Across processes: the hypervisor daemon shared by a dom0 backend
        // process and guest processes, and the client a joining process
        // passes to the unchanged drivers.
        // What a process links to join the daemon: `RemoteHypervisor` and the wire
        // format (a guest program links this, not the daemon or its xenstored).
        .target(
            name: "XenSimulatorClient",
            dependencies: [
                "XenLocks", "XenHypervisor", "XenABI", "CXen", "XenStore",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        .target(
            name: "XenSimulatorDaemon",
            dependencies: [
                "XenLocks", "XenSimulatorClient",
                "XenSimulator", "XenHypervisor", "XenABI", "CXen", "XenStore", "XenStoreServer", "XenBus", "XenSockets",
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "XenProcessTests",
            dependencies: [
                "XenSimulatorDaemon", "XenSimulatorClient", "XenSimulator", "XenHypervisor", "XenABI", "XenStore", "XenRingBenchmark", "XenWorld", "xenpv", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
    ]
)
