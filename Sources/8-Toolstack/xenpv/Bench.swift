import ArgumentParser

/// `xenpv bench …`: measurements against the C references in shared/reference.
/// Add `bench block`, `bench net` as their own files and list them here.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks of the data paths.",
        subcommands: [BenchRing.self, BenchNet.self, BenchBlock.self, BenchBridge.self, BenchXenstore.self, BenchChurn.self, BenchRingProcesses.self,
                      BenchRingPeer.self])
}

/// `--front-cpu` and `--back-cpu`: where the two sides of a benchmark run.
struct CPUPinningOptions: ParsableArguments {
    @Option(help: "CPU of the frontend thread (-1: not pinned).")
    var frontCPU: Int32 = 0

    @Option(help: "CPU of the backend thread (-1: not pinned).")
    var backCPU: Int32 = 1

    /// The frontend's CPU, nil when it is not pinned.
    var front: Int32? { frontCPU < 0 ? nil : frontCPU }
    /// The backend's CPU, nil when it is not pinned.
    var back: Int32? { backCPU < 0 ? nil : backCPU }
}
