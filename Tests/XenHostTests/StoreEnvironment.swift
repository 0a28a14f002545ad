import Foundation
import Glibc
@testable import XenHost

/// libxenstore finds its daemon through the process-wide XENSTORED_PATH when
/// it opens, so tests that point it at different servers take turns.
enum StoreEnvironment {
    private static let lock = NSLock()

    static func open(socket: String) throws -> LibXenStore {
        lock.lock()
        defer { lock.unlock() }
        setenv("XENSTORED_PATH", socket, 1)
        defer { unsetenv("XENSTORED_PATH") }
        return try LibXenStore()
    }
}
