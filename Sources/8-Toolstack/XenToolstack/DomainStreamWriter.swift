import CXen
import Foundation
import Glibc
import XenABI
import XenBus
import XenHypervisor
import XenMigrationStream
import XenSimulatorClient
import XenStore

/// Errors of save, restore and migration, with the step that failed.
public struct DomainTransferError: Error, CustomStringConvertible, Sendable {
    /// What went wrong, for the command line.
    public let description: String
    /// An error saying `description`.
    public init(_ description: String) { self.description = description }
}

/// Writes a domain to a migration stream, as libxc's save does in dom0: the pages of
/// its memory and share pools (share pools first announced as `xenpv-share-pool`
/// device records, so the receiver recreates them at the same frames), then, once
/// the domain is suspended, its grant table, its store subtree and its devices.
///
/// Event channels are not written: a resumed domain's ports are gone
/// (`SuspendOutcome.resumed`), its drivers bind new ones.
public final class DomainStreamWriter {
    /// The device class that carries a share pool's layout in the stream.
    public static let sharePoolClass = "xenpv-share-pool"

    let hypervisor: RemoteHypervisor
    let domain: DomainID
    private let output: Int32
    private let view: DomainStateView
    private var announced: Set<UInt64> = []
    private var readAhead: DomainStoreReadAhead?
    /// Bytes written so far, framing included.
    public private(set) var bytesWritten = 0

    /// Starts a stream of guest `domain` on `output` (a file or a socket; not closed here).
    public init(hypervisor: RemoteHypervisor, domain: DomainID, output: Int32) throws {
        self.hypervisor = hypervisor
        self.domain = domain
        self.output = output
        view = try hypervisor.exportDomain(domain)
    }

    /// The header and the domain record.
    public func begin(name: String) throws {
        try write(MigrationStream.header())
        try write(MigrationStream.encode(.domain(MigrationDomainInfo(
            domain: domain, frameCount: UInt64(view.mainFrames), grantFrames: UInt32(view.grantEntries / 512), name: name))))
    }

    /// Every frame of the domain that holds anything (a never-written frame is zero on
    /// the receiver too), main memory and share pools. Returns how many were sent.
    @discardableResult
    public func sendAll() throws -> Int {
        try refreshPools()
        // Only frames with a page behind them are read (a frame of zeros among them is
        // left out as well): an idle guest's never-written memory is not read at all.
        return try send(view.framesHoldingData(), skippingZeros: true)
    }

    /// The frames set in `bitmap` (a read-and-clear of log-dirty). Returns how many.
    @discardableResult
    public func send(dirty bitmap: DirtyBitmap) throws -> Int {
        try refreshPools()
        var frames: [UInt64] = []
        for f in bitmap.frames where view.holds(f.rawValue) { frames.append(f.rawValue) }
        return try send(frames, skippingZeros: false)
    }

    /// Pools the domain made since the last look, mapped and announced to the receiver.
    private func refreshPools() throws {
        // Asked again each round: a pool the guest made meanwhile appears only in a new
        // answer. The memory stays mapped: mapping it again each round, and unmapping
        // the old mapping's page tables, cost ms (in the pause, for the last round).
        try hypervisor.refreshPools(of: view)
        for p in view.pools where !announced.contains(p.first) {
            try write(MigrationStream.encode(.device(MigrationDevice(type: Self.sharePoolClass, id: UInt32(truncatingIfNeeded: p.first), keys: [
                .init("grantee", String(p.grantee.rawValue)), .init("writable", p.writable ? "1" : "0"),
            ]))))
            announced.insert(p.first)
        }
    }

    /// Sends `frames` in batches; returns how many went (pages of zeros left out when
    /// `skippingZeros`).
    private func send(_ frames: [UInt64], skippingZeros: Bool) throws -> Int {
        var start = 0
        var sent = 0
        while start < frames.count {
            var batch = Array(frames[start..<min(frames.count, start + MigrationLimits.maximumPagesPerBatch)])
            start += batch.count
            // Filled by the read (nothing to zero first: 256 MiB in a first round).
            var data = try [UInt8](unsafeUninitializedCapacity: batch.count * XenPage.size) { out, count in
                try view.read(batch, into: UnsafeMutableRawBufferPointer(out))
                count = batch.count * XenPage.size
            }
            if skippingZeros { Self.dropZeroPages(&batch, &data) }
            guard !batch.isEmpty else { continue }
            try write(MigrationStream.encode(.pages(MigrationPageBatch(frames: batch.map { FrameNumber($0) }, data: data))))
            sent += batch.count
        }
        return sent
    }

    /// Leaves out of `frames` and `data` (a page each) the pages of zeros.
    private static func dropZeroPages(_ frames: inout [UInt64], _ data: inout [UInt8]) {
        var kept = 0
        data.withUnsafeMutableBytes { bytes in
            for i in frames.indices {
                let page = bytes.baseAddress! + i * XenPage.size
                let words = page.assumingMemoryBound(to: UInt64.self)
                guard (0..<(XenPage.size / 8)).contains(where: { words[$0] != 0 }) else { continue }
                if kept != i { memmove(bytes.baseAddress! + kept * XenPage.size, page, XenPage.size) }
                frames[kept] = frames[i]
                kept += 1
            }
        }
        frames.removeLast(frames.count - kept)
        data.removeLast(data.count - kept * XenPage.size)
    }

    /// The devices' configuration ahead of the memory (a migration): the reader makes each
    /// device on its host at once, so that host's backend is waiting in InitWait with its
    /// disk open when the guest resumes there, and the pause has no device to create.
    /// ``finish()`` sends the configuration again as it is at the pause.
    public func sendDevicesAhead() async throws {
        let state = try await DomainStoreState.read(domain, on: hypervisor.store)
        for device in state.devices { try write(MigrationStream.encode(.device(device))) }
    }

    /// Starts reading the domain's store subtree and devices now, in a transaction that
    /// ``finish()`` commits once the domain is paused (see `DomainStoreReadAhead`): call it
    /// just before asking for the pause, so the pause does not wait for those reads.
    public func readStoreAhead() {
        readAhead = DomainStoreReadAhead(domain, on: hypervisor.store)
    }

    /// The grant table's entries in use, the store subtree (`/local/domain/D`, its
    /// `/vm` entry), the devices' backend configuration, and the end record.
    public func finish() async throws {
        var grants: [MigrationGrantEntry] = []
        for r in 0..<view.grantEntries {
            // The table is the guest's memory and a guest that ignores the pause may still
            // write it: the header word (flags, domid) is read once and split, so the
            // entry sent is one the guest wrote, never half of two.
            let e = view.table + r * 8
            let header = e.load(as: UInt32.self)
            let flags = UInt16(truncatingIfNeeded: header)
            guard flags & UInt16(GTF_type_mask) != 0 else { continue }
            grants.append(MigrationGrantEntry(ref: GrantRef(UInt32(r)), flags: flags, grantee: DomainID(UInt16(truncatingIfNeeded: header >> 16)),
                                              frame: FrameNumber(UInt64(e.load(fromByteOffset: 4, as: UInt32.self)))))
        }
        for chunk in stride(from: 0, to: grants.count, by: 512) {
            try write(MigrationStream.encode(.grants(Array(grants[chunk..<min(grants.count, chunk + 512)]))))
        }
        let state: DomainStoreState
        if let readAhead { state = try await readAhead.finish() } else { state = try await DomainStoreState.read(domain, on: hypervisor.store) }
        for chunk in stride(from: 0, to: state.entries.count, by: 64) {
            try write(MigrationStream.encode(.store(Array(state.entries[chunk..<min(state.entries.count, chunk + 64)]))))
        }
        for device in state.devices { try write(MigrationStream.encode(.device(device))) }
        try write(MigrationStream.encode(.end))
    }

    private func write(_ bytes: [UInt8]) throws {
        var done = 0
        try bytes.withUnsafeBytes { b in
            while done < b.count {
                let n = Glibc.write(output, b.baseAddress! + done, b.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw DomainTransferError("writing the stream: \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
        bytesWritten += bytes.count
    }
}
