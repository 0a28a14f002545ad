import Foundation
import TestSupport
import Testing
import XenABI
import XenBus
import XenLocks
import XenStore

/// A store whose writes answer only once `expected` of them are in flight together, and
/// fail for the paths in `refused`: a caller that waits for each reply before sending the
/// next never gets one.
private final class GatedStore: XenStoreOperations {
    let expected: Int
    let refused: [String: XenStoreError.Code]
    let arrived = Locked<[String]>([])

    init(expected: Int, refused: [String: XenStoreError.Code] = [:]) {
        self.expected = expected
        self.refused = refused
    }

    func request(_ type: XenStoreMessageType, payload: [UInt8]) async throws(XenStoreError) -> XenStoreMessage {
        let path = String(decoding: payload.prefix { $0 != 0 }, as: UTF8.self)
        arrived.withLock { $0.append(path) }
        let together = await eventually(60) { self.arrived.withLock { $0.count } >= self.expected }
        guard together else { throw XenStoreError(.busy, "\(path) was written alone") }
        if let code = refused[path] { throw XenStoreError(code, "write \(path) refused") }
        return XenStoreMessage(type: type, requestID: 0, transactionID: 0, payload: [])
    }
}

@Suite(.timeLimit(.minutes(3)))
struct WriteAllTests {
    @Test func everyWriteIsInFlightAtOnce() async throws {
        let entries = (0..<12).map { ("/local/domain/0/backend/vbd/1/51712/key\($0)", "\($0)") }
        let store = GatedStore(expected: entries.count)
        try await store.writeAll(entries)
        #expect(Set(store.arrived.withLock { $0 }) == Set(entries.map(\.0)))
    }

    @Test func theFirstFailureInOrderIsThrownAfterAllWereAnswered() async throws {
        let entries = (0..<6).map { ("/k\($0)", "v") }
        let store = GatedStore(expected: entries.count, refused: ["/k4": .noSpace, "/k2": .accessDenied])
        let error = await #expect(throws: XenStoreError.self) { try await store.writeAll(entries) }
        #expect(error?.code == .accessDenied)
        #expect(store.arrived.withLock { $0.count } == entries.count)
    }

    @Test func nothingToWriteSendsNothing() async throws {
        let store = GatedStore(expected: 1)
        try await store.writeAll([])
        #expect(store.arrived.withLock { $0.isEmpty })
    }
}
