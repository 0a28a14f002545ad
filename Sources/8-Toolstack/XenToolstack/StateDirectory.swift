import Foundation

/// What the toolstack remembers of a domain it created, beside the store: its
/// program, for `destroy`, and its config, for a restart.
public struct DomainRecord: Hashable, Sendable, Codable {
    /// The domain's name.
    public var name: String
    /// The domain's id.
    public var domid: UInt16
    /// The domain's UUID.
    public var uuid: String
    /// The config file it was created from (absolute).
    public var configPath: String
    /// Its program, once started.
    public var program: GuestProgram?

    /// A record from its parts.
    public init(name: String, domid: UInt16, uuid: String, configPath: String, program: GuestProgram? = nil) {
        self.name = name
        self.domid = domid
        self.uuid = uuid
        self.configPath = configPath
        self.program = program
    }
}

/// The toolstack's own files for a daemon: `console/guest-NAME.log`, the program's
/// output as xenconsoled keeps `/var/log/xen/console/guest-NAME.log`, and
/// `domains/NAME.json`, a ``DomainRecord`` per domain created.
public struct StateDirectory: Sendable {
    /// The directory.
    public let path: String

    /// The state directory at `path`.
    public init(path: String) { self.path = path }

    /// The default for a daemon's socket: `SOCKET.state` beside it.
    public static func beside(socket: String) -> StateDirectory { StateDirectory(path: socket + ".state") }

    /// The console log of domain `name`.
    public func consoleLog(_ name: String) -> String { path + "/console/guest-" + name + ".log" }

    func recordPath(_ name: String) -> String { path + "/domains/" + name + ".json" }

    /// Makes the directory and its `console` and `domains` folders.
    /// - Throws: ``ToolstackError`` `.state`.
    public func prepare() throws(ToolstackError) {
        for dir in [path, path + "/console", path + "/domains"] {
            do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw ToolstackError(.state, "cannot make \(dir)", underlying: error)
            }
        }
    }

    /// Saves `record` (replacing an older one of the same name).
    /// - Throws: ``ToolstackError`` `.state`.
    public func save(_ record: DomainRecord) throws(ToolstackError) {
        do {
            let data = try JSONEncoder().encode(record)
            try data.write(to: URL(fileURLWithPath: recordPath(record.name)), options: .atomic)
        } catch {
            throw ToolstackError(.state, "cannot save the record of \(record.name)", underlying: error)
        }
    }

    /// The record of `name`, if there is a readable one. (A domain's name never holds `/`.)
    public func record(_ name: String) -> DomainRecord? {
        guard !name.contains("/"), let data = FileManager.default.contents(atPath: recordPath(name)) else { return nil }
        return try? JSONDecoder().decode(DomainRecord.self, from: data)
    }

    /// Removes the record of `name`.
    public func removeRecord(_ name: String) {
        guard !name.contains("/") else { return }
        try? FileManager.default.removeItem(atPath: recordPath(name))
    }
}
