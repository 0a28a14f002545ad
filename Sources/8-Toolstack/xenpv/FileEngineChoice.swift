import ArgumentParser
import Logging
import SystemPackage
import XenBlockStorage

extension FileEngineKind: ExpressibleByArgument {}

extension FileEngineKind {
    /// The engine asked for, or the preferred one for `path`; says in the log when io_uring had to give way.
    static func resolve(_ asked: FileEngineKind?, for path: String, logger: Logger?) -> FileEngineKind {
        if let asked { return asked }
        let (kind, note) = preferred(for: FilePath(path))
        if let note { logger?.notice("\(note)") }
        return kind
    }
}
