import ArgumentParser
import Logging
import XenBlockStorage

extension FileEngineKind: ExpressibleByArgument {}

extension FileEngineKind {
    /// The engine asked for, or the preferred one; says in the log when io_uring had to give way.
    static func resolve(_ asked: FileEngineKind?, logger: Logger?) -> FileEngineKind {
        if let asked { return asked }
        let (kind, note) = preferred
        if let note { logger?.notice("\(note)") }
        return kind
    }
}
