// swift-tools-version: 6.1
// A quick storage-engine benchmark: LibaioStorage random/sequential I/O on a file or
// block device, compared with fio on the same file in the same run (see run.sh).
import Foundation
import PackageDescription

// A path dependency's identity is its directory's name: the root package is "main" in
// one checkout and a worktree name in another, so read it from where this file is.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
let rootIdentity = root.lastPathComponent.lowercased()

let package = Package(
    name: "StorageEngineBench",
    dependencies: [
        .package(path: "../.."),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        .executableTarget(
            name: "storage-bench",
            dependencies: [
                .product(name: "XenBlockStorage", package: rootIdentity),
                .product(name: "SystemPackage", package: "swift-system"),
            ]),
    ]
)
