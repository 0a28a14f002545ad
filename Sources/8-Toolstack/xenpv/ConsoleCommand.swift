import ArgumentParser
import Foundation
import XenToolstack

/// `xenpv console DOM`: prints a domain's console log, as xenconsoled keeps it.
struct ConsoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Print a domain's console (its program's output), by name or id.")

    @Argument(help: "The domain's name or id.")
    var domain: String

    @OptionGroup var options: ToolstackOptions

    func run() async throws {
        let state = try options.state()
        // A name's log outlives its domain, as xenconsoled's does; an id is looked up in the store.
        var name = domain
        if !FileManager.default.fileExists(atPath: state.consoleLog(name)) || domain.contains("/") {
            let store = try options.store()
            defer { store.close() }
            name = try await toolstackStep { try await Toolstack.resolve(domain, in: store).name }
        }
        guard !name.contains("/"), let data = FileManager.default.contents(atPath: state.consoleLog(name)) else {
            throw CommandError("no console log for \(name) in \(state.path)/console")
        }
        FileHandle.standardOutput.write(data)
    }
}
