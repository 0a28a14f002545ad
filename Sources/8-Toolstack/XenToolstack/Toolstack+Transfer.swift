import XenABI
import XenSimulatorClient

/// Save, restore and migration through the toolstack's dom0 join (see ``DomainMover``).
extension Toolstack {
    /// Suspends guest `id`, writes it to `path` and releases it on this host; its
    /// process waits, parked, for a restore. Returns the stream's bytes.
    public func save(_ id: DomainID, to path: String, timeout: Double = 30) async throws -> Int {
        try await DomainMover.save(id, to: path, on: hypervisor, timeout: timeout)
    }

    /// Restores the domain saved in `path` on the daemon at `destinationSocket`
    /// (`destination`, or this toolstack's own daemon when nil) and sends its parked
    /// process there if it waits on this toolstack's daemon.
    public func restore(from path: String, to destination: Toolstack?, destinationSocket: String) async throws
        -> (DomainStreamReader.Restored, Bool)
    {
        try await DomainMover.restore(from: path, on: (destination ?? self).hypervisor, destinationSocket: destinationSocket,
                                      parkedOn: hypervisor)
    }

    /// Live-migrates guest `id` to `destination`'s daemon at `destinationSocket`.
    public func migrate(_ id: DomainID, to destination: Toolstack, destinationSocket: String, budget: DomainMover.Budget = .init(),
                        timeout: Double = 30, progress: @Sendable (String) -> Void = { _ in }) async throws -> DomainMover.Figures {
        try await DomainMover.migrate(id, from: hypervisor, to: .daemon(destination.hypervisor, socket: destinationSocket),
                                      budget: budget, timeout: timeout, progress: progress)
    }

    /// Live-migrates guest `id` through a `xenpv migrate-receive` at the other end of `fd`.
    public func migrate(_ id: DomainID, toReceiverOn fd: Int32, budget: DomainMover.Budget = .init(), timeout: Double = 30)
        async throws -> DomainMover.Figures
    {
        try await DomainMover.migrate(id, from: hypervisor, to: .receiver(fd: fd), budget: budget, timeout: timeout)
    }

    /// Receives one migration on `fd` and restores it on this toolstack's daemon (at `socket`).
    public func receiveMigration(from fd: Int32, socket: String, timeout: Double = 30) async throws -> DomainStreamReader.Restored {
        try await DomainMover.receive(from: fd, on: hypervisor, socket: socket, timeout: timeout)
    }
}
