import NBDProtocol
import Testing
@testable import XenBlockExport

/// What the server answers each request header with, before any data is read.
@Suite struct ExportPolicyTests {
    let writable = ExportTerms(geometry: BlockExportGeometry(size: 1 << 20, canDiscard: true, discardZeroes: true), limits: BlockExportLimits())
    let readOnly = ExportTerms(geometry: BlockExportGeometry(size: 1 << 20, readOnly: true), limits: BlockExportLimits())

    @Test func flagsFollowTheDevice() {
        #expect(writable.flags == [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .canMultiConn])
        #expect(readOnly.flags == [.hasFlags, .readOnly, .sendFlush, .sendFUA, .canMultiConn])
        let noFlush = ExportTerms(geometry: BlockExportGeometry(size: 1 << 20, canFlush: false), limits: BlockExportLimits())
        #expect(noFlush.flags == [.hasFlags, .sendWriteZeroes])
        #expect(writable.blockSizes == NBDBlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 32 << 20))
        let bigSectors = ExportTerms(geometry: BlockExportGeometry(size: 1 << 20, sectorSize: 4096), limits: BlockExportLimits())
        #expect(bigSectors.blockSizes.minimum == 4096)
    }

    private func req(_ c: NBDCommand, _ offset: UInt64, _ length: UInt32, _ flags: NBDCommandFlags = []) -> NBDRequest {
        NBDRequest(flags: flags, command: c, handle: 1, offset: offset, length: length)
    }

    @Test func goodRequestsRun() {
        #expect(writable.decide(req(.read, 0, 4096)) == .run)
        #expect(writable.decide(req(.write, (1 << 20) - 512, 512, .fua)) == .run)
        #expect(writable.decide(req(.flush, 0, 0)) == .run)
        #expect(writable.decide(req(.trim, 4096, 8192)) == .run)
        #expect(writable.decide(req(.writeZeroes, 0, 1 << 20, .noHole)) == .run)
        #expect(writable.decide(req(.disconnect, 0, 0)) == .disconnect)
    }

    @Test func badRequestsGetProtoMdsErrors() {
        #expect(writable.decide(req(.read, 100, 512)) == .refuse(.invalid))
        #expect(writable.decide(req(.write, 0, 100)) == .refuse(.invalid))
        #expect(writable.decide(req(.read, 1 << 20, 512)) == .refuse(.invalid))
        #expect(writable.decide(req(.write, 1 << 20, 512)) == .refuse(.noSpace))
        #expect(writable.decide(req(.write, UInt64.max - 511, 1024)) == .refuse(.noSpace))
        #expect(writable.decide(req(.read, 0, 64 << 20)) == .refuse(.invalid))
        #expect(writable.decide(req(.read, 0, 512, .noHole)) == .refuse(.invalid))
        #expect(writable.decide(req(NBDCommand(rawValue: 99), 0, 0)) == .refuse(.invalid))
        #expect(writable.decide(req(.blockStatus, 0, 512)) == .refuse(.invalid))
        #expect(readOnly.decide(req(.write, 0, 512)) == .refuse(.permission))
        #expect(readOnly.decide(req(.trim, 0, 512)) == .refuse(.permission))
        #expect(readOnly.decide(req(.writeZeroes, 0, 512)) == .refuse(.permission))
        #expect(readOnly.decide(req(.read, 0, 512)) == .run)
    }

    @Test func aWriteTooLargeToSwallowCostsTheConnection() {
        guard case .hangUp = writable.decide(req(.write, 0, UInt32.max)) else {
            Issue.record("a 4 GiB write was not refused by hanging up")
            return
        }
        guard case .hangUp = readOnly.decide(req(.write, 0, (32 << 20) + 512)) else {
            Issue.record("a write past the maximum was not refused by hanging up")
            return
        }
    }
}
