// The migration stream decoder (XenMigrationStream), fed the way a socket feeds it.
//
// Input: byte 0 picks the read size (1 to 256 bytes per feed); the rest is the
// stream. Invariants: decoding never traps; it buffers at most one maximal
// record beyond what it returned; a failed decoder stays failed; every record
// decoded re-encodes to bytes that decode to the same record.
import XenABI
import XenMigrationStream

func fuzzOne(_ input: UnsafeRawBufferPointer) {
    guard let config = input.first else { return }
    let step = Int(config) + 1
    let bytes = Array(input.dropFirst())
    var decoder = MigrationStreamDecoder()
    var offset = 0
    var failed = false
    var records: [MigrationRecord] = []
    feeding: while offset < bytes.count {
        let end = min(bytes.count, offset + step)
        decoder.feed(bytes[offset..<end])
        offset = end
        while true {
            do {
                guard let r = try decoder.next() else { break }
                records.append(r)
            } catch {
                failed = true
                break feeding
            }
        }
        precondition(decoder.buffered <= MigrationStream.headerSize + MigrationLimits.maximumRecordBody + 12 + step,
                     "the decoder holds \(decoder.buffered) bytes")
    }
    if failed {
        precondition((try? decoder.next()) == nil && (try? decoder.finish()) == nil, "a failed decoder recovered")
    }
    for r in records {
        guard let again = try? MigrationStream.encode(r) else { fatalError("decoded \(r.type) record does not re-encode") }
        var d = MigrationStreamDecoder()
        d.feed(MigrationStream.header() + (try! MigrationStream.encode(.domain(MigrationDomainInfo(domain: DomainID(0), frameCount: 1, grantFrames: 1, name: "")))))
        _ = try! d.next()
        d.feed(again)
        if case .domain = r { continue }  // a second domain record is refused by design
        precondition((try? d.next()) == r, "round trip changed a \(r.type) record")
    }
}
