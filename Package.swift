// swift-tools-version: 6.1
// XenPV: Xen-style paravirtual split drivers in Swift. See DESIGN.md in
// ../shared and the README for the layers; each arrow below points down only.
import PackageDescription

let package = Package(
    name: "XenPV",
    products: [
        .library(name: "XenABI", targets: ["XenABI"]),
        .library(name: "XenHypervisor", targets: ["XenHypervisor"]),
        // Block (issue 5): protocol and storage engines.
        .library(name: "XenBlockProtocol", targets: ["XenBlockProtocol"]),
        .library(name: "XenBlockStorage", targets: ["XenBlockStorage"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-atomics", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        // Layer 1: Xen's public headers with user-space barriers, plus C shims
        // for what Swift cannot import (macros, variadic syscalls, GNU-only calls).
        .target(name: "CXen"),
        // libaio has no pkg-config file; the module map links it by name.
        .systemLibrary(name: "CAIO"),

        // Layer 2: typed Xen integers and the hypercall protocols drivers use.
        .target(name: "XenABI", dependencies: ["CXen"]),
        .target(
            name: "XenHypervisor",
            dependencies: [
                "XenABI",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),

        .testTarget(name: "XenABITests", dependencies: ["XenABI", "CXen"]),

        // ---- Block (issue 5): blkif protocol and storage engines ----
        // The x86_32-abi ring layouts (packed, as Linux blkback defines them).
        .target(name: "CBlkifABI", dependencies: ["CXen"]),
        .target(name: "XenBlockProtocol", dependencies: ["XenABI", "CXen", "CBlkifABI"]),
        // Test-only C: counts this thread's allocations (interposes malloc) for hot-path tests.
        .target(name: "CMallocCounter", path: "Tests/CMallocCounter"),
        // Test-only C: offsetof/sizeof and slots filled through C field names.
        .target(name: "CBlkifProbe", dependencies: ["CXen", "CBlkifABI"], path: "Tests/CBlkifProbe"),
        .testTarget(
            name: "XenBlockProtocolTests",
            dependencies: ["XenBlockProtocol", "XenABI", "CXen", "CBlkifABI", "CBlkifProbe", "CMallocCounter"]),
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
                "XenBlockStorage", "CMallocCounter",
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
        // ---- end Block ----
    ]
)
