import ArgumentParser

/// The `xenpv` command line. Each command group lives in its own file and is
/// listed here.
@main
struct XenPV: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenpv",
        abstract: "Xen-style paravirtual split drivers: simulated hosts, demos and benchmarks.",
        subcommands: [DemoCommand.self, ListCommand.self, TopCommand.self, XenstoreCommand.self, XenstoredCommand.self, Bench.self,
                      HypervisorCommand.self, DomainCommand.self, BackendCommand.self, GuestCommand.self,
                      CreateCommand.self, ConsoleCommand.self, ShutdownCommand.self, DestroyCommand.self, BlockAttachCommand.self,
                      BlockDetachCommand.self, BlockListCommand.self, NetworkAttachCommand.self,
                      NetworkDetachCommand.self, NetworkListCommand.self, SaveCommand.self, RestoreCommand.self,
                      MigrateCommand.self, MigrateReceiveCommand.self])
}
