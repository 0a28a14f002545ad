// swift-tools-version: 6.1
// XenPV: Xen-style paravirtual split drivers in Swift. See DESIGN.md in
// ../shared and the README for the layers; each arrow below points down only.
import PackageDescription

let package = Package(
    name: "XenPV",
    products: [
        .library(name: "XenABI", targets: ["XenABI"]),
        .library(name: "XenHypervisor", targets: ["XenHypervisor"]),
        // XenStore and XenBus (issue 4, branch store)
        .library(name: "XenStore", targets: ["XenStore"]),
        .library(name: "XenBus", targets: ["XenBus"]),
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

        // ---- Layer 4: XenStore and XenBus (issue 4, branch store) ----
        .target(
            name: "XenStore",
            dependencies: [
                "XenABI", "CXen",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]),
        .target(name: "XenBus", dependencies: ["XenStore", "XenABI"]),
        .executableTarget(
            name: "XenStoreBench", dependencies: ["XenStore"], path: "Benchmarks/XenStoreBench"),
        .testTarget(
            name: "XenStoreTests",
            dependencies: ["XenStore", "XenABI", "CXen", .product(name: "Logging", package: "swift-log")]),
        .testTarget(
            name: "XenBusTests",
            dependencies: ["XenBus", "XenStore", "XenABI", .product(name: "Logging", package: "swift-log")]),
        // ---- end XenStore and XenBus ----
    ]
)
