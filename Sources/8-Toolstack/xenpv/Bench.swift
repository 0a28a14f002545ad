import ArgumentParser

/// `xenpv bench …`: measurements against the C references in shared/reference.
/// Add `bench block`, `bench net` as their own files and list them here.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Benchmarks of the data paths.",
        subcommands: [BenchRing.self, BenchNet.self, BenchBlock.self, BenchBridge.self, BenchXenstore.self, BenchChurn.self, BenchRingProcesses.self,
                      BenchRingPeer.self])
}
