import ArgumentParser
import Foundation
import Logging
import NBDProtocol
import SystemPackage
import XenBlockBack
import XenBlockStorage
import XenStore
import XenToolstack

/// How `xenpv backend` opens one vbd's disk: from its backend directory, which dom0
/// owns and the guest only reads, so `params` is the toolstack's word; checked all
/// the same (``DiskTarget``), a bad one keeps only that device down.
enum BackendDisk {
    /// The engine: the disk's own (`engine` in its backend directory, from the disk
    /// spec's `engine=`), else `engine`, the one asked for on the command line, else the
    /// disk's preferred one (``FileEngineKind/resolve(_:for:logger:)``). The page cache:
    /// the disk's `cache` key (the spec's `cache=`), else `cache`, else none (`O_DIRECT`).
    /// An `engine` or `cache` key naming no such thing keeps that device down, with the key
    /// and value in the error; so does `cache` on an NBD export, which has no host cache here.
    static func open(directory dir: String, store: any XenStoreConnection, fallback: String?,
                     engine: FileEngineKind?, cache: DiskCache?, logger: Logger) async throws -> BlockBackendDisk {
        guard let params = try await store.readIfPresent(dir + "/params") else {
            guard let fallback else {
                throw CommandError("\(dir) has no params and the backend has no --disk")
            }
            // Checked as `params` is (a block device's size too): one stat, no user lookups
            // (a migrated guest's destination backend does this while the guest is paused).
            let target = try DiskTarget(checking: fallback)
            if target.nbd != nil { return try await remote(target, dir: dir, readOnly: false, discard: true) }
            return file(target, dir: dir, engine: engine, cache: cache ?? .direct, readOnly: false, discard: true, logger: logger)
        }
        let target = try DiskTarget(checking: params)
        // As Linux's blkback: read-write only when `mode` holds a w (missing: read-only).
        let readOnly = !(try await store.readIfPresent(dir + "/mode") ?? "r").contains("w")
        let discard = try await store.readIfPresent(dir + "/discard-enable") != "0"
        let ownCache: DiskCache? = try await choice("cache", in: dir, store: store)
        if target.nbd != nil {
            if let ownCache {
                throw CommandError("\(dir)/cache is \"\(ownCache.rawValue)\", but \(target.path) is an NBD export: the page cache is the server's")
            }
            return try await remote(target, dir: dir, readOnly: readOnly, discard: discard)
        }
        let ownEngine: FileEngineKind? = try await choice("engine", in: dir, store: store)
        return file(target, dir: dir, engine: ownEngine ?? engine, cache: ownCache ?? cache ?? .direct, readOnly: readOnly,
                    discard: discard, logger: logger)
    }

    /// The backend directory's `key` as one of `T`'s values, nil when absent; a value naming
    /// none of them is an error with the key, the value and every spelling.
    private static func choice<T: RawRepresentable & CaseIterable>(_ key: String, in dir: String,
                                                                     store: any XenStoreConnection) async throws -> T?
    where T.RawValue == String {
        guard let text = try await store.readIfPresent(dir + "/" + key) else { return nil }
        guard let value = T(rawValue: text) else {
            throw CommandError("\(dir)/\(key) is \"\(text)\", not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return value
    }

    /// An image file or block device through `engine` (else the file's preferred one) and
    /// `cache`, said in the log.
    private static func file(_ target: DiskTarget, dir: String, engine: FileEngineKind?, cache: DiskCache, readOnly: Bool,
                             discard: Bool, logger: Logger) -> BlockBackendDisk {
        let path = target.path
        let kind = FileEngineKind.resolve(engine, for: path, logger: logger)
        say("xenpv backend: \(dir) serves \(path) through \(kind), cache=\(cache.rawValue)" + (readOnly ? ", read-only" : ""))
        return BlockBackendDisk(byteCount: target.byteCount, readOnly: readOnly, discard: discard && !readOnly) {
            try kind.open(FilePath(path), readOnly: readOnly, directIO: cache.directIO, queueDepth: 64)
        }
    }

    /// An NBD export: one connection to learn its size and flags, then one per queue.
    static func remote(_ target: DiskTarget, dir: String, readOnly: Bool, discard: Bool) async throws -> BlockBackendDisk {
        guard let uri = target.nbd else { throw CommandError("\(target.path) is not an NBD URI") }
        let terms = try await NBDStorage.probe(uri)
        let ro = readOnly || terms.flags.contains(.readOnly)
        say("xenpv backend: \(dir) serves \(uri) through NBD (\(terms.size) bytes)" + (ro ? ", read-only" : ""))
        // Without multi-conn a flush covers only its own connection: one queue, one connection.
        return BlockBackendDisk(byteCount: terms.size, readOnly: ro, discard: discard && !ro && terms.canDiscard,
                                maxQueues: terms.flags.contains(.canMultiConn) ? .max : 1) {
            try NBDStorage(uri: uri, readOnly: ro, queueDepth: 64)
        }
    }
}

extension DiskCache: ExpressibleByArgument {
    /// How a file engine opens the image: `O_DIRECT` where the file system allows it, or the page cache.
    var directIO: StorageDirectIO {
        switch self {
        case .direct: .preferred
        case .writeback: .never
        }
    }
}
