// swift-tools-version: 6.1
// Benchmarks of XenPV, a package of its own so that the root package does not
// depend on package-benchmark. Run from this directory:
//   swift package benchmark
import PackageDescription

let package = Package(
    name: "XenPVBenchmarks",
    dependencies: [
        .package(name: "XenPV", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
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
    ]
)
