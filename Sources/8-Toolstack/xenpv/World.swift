import ArgumentParser
import Foundation
import XenSimulatorClient
import XenWorld

extension World: ExpressibleByArgument {}

extension JoinedDomain {
    /// Joins `world` for a synchronous command, in the command line's words.
    static func join(_ world: World, connect: String?, as request: DomainRequest) throws -> JoinedDomain {
        if world.resolved == .simulated, connect == nil, ProcessInfo.processInfo.environment[JoinedDomain.socketVariable] == nil {
            throw ValidationError("--connect PATH is needed for the simulated world (a `xenpv hypervisor --socket PATH`)")
        }
        do {
            return try ProcessSupport.runBlocking { try await JoinedDomain.join(world, socket: connect, as: request) }
        } catch let error as WorldError {
            throw CommandError(error.description)
        }
    }
}
