// swift-tools-version: 6.1
// Every benchmark of XenPV that is a program of its own, in one package so that
// the root package does not depend on package-benchmark. From this directory:
//   swift package benchmark                      the ring data path (package-benchmark)
//   swift run -c release storage-bench --help    a storage engine alone (StorageEngine/run.sh runs fio beside it)
// The engines behind `xenpv bench` (ring, net, block, xenstore) are in Engines/,
// built by the root package because the `xenpv` command links them. The other
// folders hold the scripts that run a benchmark against its yardstick (fio, the C
// reference ring, a veth pair) in one run.
import PackageDescription

let package = Package(
    name: "XenPVBenchmarks",
    dependencies: [
        .package(name: "XenPV", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // The ring between two simulated domains (issue 3): malloc counts of
        // the data path, wall clock and throughput.
        .executableTarget(
            name: "RingBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "XenRingBenchmark", package: "XenPV"),
                .product(name: "XenSimulator", package: "XenPV"),
            ],
            path: "Benchmarks/RingBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
        // UringStorage or LibaioStorage random/sequential I/O on a file or block device,
        // for comparison with fio on the same file in the same run (StorageEngine/run.sh).
        .executableTarget(
            name: "storage-bench",
            dependencies: [
                .product(name: "XenBlockStorage", package: "XenPV"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Sources/storage-bench"),
    ]
)
