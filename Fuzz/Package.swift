// swift-tools-version: 6.1
// libFuzzer targets for every parser a peer feeds (issue 14). Not part of the
// root package's build: `swift build` and `swift test` at the root never see
// them. Build and run them with Fuzz/run.sh, which passes
//   -Xswiftc -sanitize=fuzzer,address
// Each target's main.swift hands its one-input function to libFuzzer's
// LLVMFuzzerRunDriver (FuzzSupport): SwiftPM points `main` at the module's
// own entry point, so libFuzzer's main cannot be used.
import PackageDescription

let package = Package(
    name: "XenPVFuzz",
    dependencies: [
        .package(name: "XenPV", path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        .target(name: "CFuzzerDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzerDriver"]),
        .executableTarget(
            name: "fuzz-blkif",
            dependencies: ["FuzzSupport", .product(name: "XenBlockProtocol", package: "XenPV")]),
        .executableTarget(
            name: "fuzz-netif",
            dependencies: ["FuzzSupport", .product(name: "XenNetProtocol", package: "XenPV"), .product(name: "XenABI", package: "XenPV")]),
        .executableTarget(
            name: "fuzz-xs-wire",
            dependencies: [
                "FuzzSupport", .product(name: "XenStore", package: "XenPV"), .product(name: "XenStoreServer", package: "XenPV"),
                .product(name: "XenABI", package: "XenPV"),
            ]),
        .executableTarget(
            name: "fuzz-xs-engine",
            dependencies: [
                "FuzzSupport", .product(name: "XenStore", package: "XenPV"), .product(name: "XenStoreServer", package: "XenPV"),
                .product(name: "XenABI", package: "XenPV"),
            ]),
        .executableTarget(
            name: "fuzz-daemon-wire",
            dependencies: ["FuzzSupport", .product(name: "XenSimulatorDaemon", package: "XenPV"),
                           .product(name: "XenSimulatorClient", package: "XenPV")]),
        .executableTarget(
            name: "fuzz-xenbus",
            dependencies: [
                "FuzzSupport",
                .product(name: "XenBus", package: "XenPV"), .product(name: "XenStore", package: "XenPV"),
                .product(name: "XenStoreServer", package: "XenPV"),
                .product(name: "XenBlockBack", package: "XenPV"), .product(name: "XenBlockFront", package: "XenPV"),
                .product(name: "XenBlockStorage", package: "XenPV"),
                .product(name: "XenBlockProtocol", package: "XenPV"), .product(name: "XenNetProtocol", package: "XenPV"),
                .product(name: "XenSimulator", package: "XenPV"), .product(name: "XenHypervisor", package: "XenPV"),
                .product(name: "XenABI", package: "XenPV"), .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(
            name: "fuzz-migration-stream",
            dependencies: ["FuzzSupport", .product(name: "XenMigrationStream", package: "XenPV"), .product(name: "XenABI", package: "XenPV")]),
        // Not a fuzz target: writes every target's seeds from the project's encoders.
        .executableTarget(
            name: "fuzz-seeds",
            dependencies: [
                .product(name: "XenBlockProtocol", package: "XenPV"), .product(name: "XenNetProtocol", package: "XenPV"),
                .product(name: "XenStore", package: "XenPV"), .product(name: "XenSimulatorDaemon", package: "XenPV"), .product(name: "XenSimulatorClient", package: "XenPV"),
                .product(name: "XenABI", package: "XenPV"),
            ]),
    ]
)
