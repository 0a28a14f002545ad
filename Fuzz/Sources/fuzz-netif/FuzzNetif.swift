// netif tx and rx parsing: the backend's TxPacketParser over request slots a
// frontend wrote, and the frontend's RxPacketParser over response slots a
// backend wrote.
//
// Input: byte 0 picks the direction and the slot limit; the rest is a run of
// 12-byte tx request slots or 8-byte rx response slots (a trailing partial slot
// is ignored). Invariants: no trap; every consumed tx slot owes exactly one
// response; a complete tx packet stays within a page per fragment and adds up
// to its total, and re-encoded with TxPacketEncoder it parses to the same
// packet; a complete rx packet's fragments each lie inside a page.
import CXen
import XenABI
import XenNetProtocol

func fuzzOne(_ input: UnsafeRawBufferPointer) {
    guard let config = input.first else { return }
    let body = UnsafeRawBufferPointer(rebasing: input.dropFirst())
    let maxSlots = 1 + Int(config >> 1 & 31)
    if config & 1 == 0 { fuzzTx(body, maxSlots: maxSlots) } else { fuzzRx(body, maxSlots: maxSlots) }
}

private func fuzzTx(_ body: UnsafeRawBufferPointer, maxSlots: Int) {
    let stride = MemoryLayout<netif_tx_request>.size
    var parser = TxPacketParser(maxSlots: maxSlots)
    var consumed = 0
    for i in 0..<body.count / stride {
        let slot = body.loadUnaligned(fromByteOffset: i * stride, as: netif_tx_request.self)
        if !parser.isMidPacket { consumed = 0 }
        consumed += 1
        let complete: Bool
        do { complete = try parser.consume(slot) } catch {
            precondition(!parser.isMidPacket, "an error leaves the parser mid-packet")
            precondition(parser.responses.count == consumed, "\(consumed) slots, \(parser.responses.count) responses")
            continue
        }
        precondition(parser.responses.count == consumed, "\(consumed) slots, \(parser.responses.count) responses")
        guard complete else { continue }
        checkTxPacket(parser)
    }
}

private func checkTxPacket(_ p: TxPacketParser) {
    precondition(!p.fragments.isEmpty && p.fragments.count <= p.maxSlots)
    precondition(p.totalSize >= Netif.minimumPacketSize)
    var sum = 0
    for f in p.fragments {
        precondition(Int(f.offset) + Int(f.size) <= XenPage.size, "fragment \(f) leaves its page")
        sum += Int(f.size)
    }
    precondition(sum == p.totalSize, "fragments add up to \(sum), total \(p.totalSize)")
    precondition(p.responses.count == p.fragments.count + p.extras.count)

    // Re-encode as a frontend would and parse again.
    var ids: [UInt16] = []
    for case .request(let id) in p.responses { ids.append(id) }
    let requests = zip(p.fragments, ids).map { TxFragmentRequest(ref: $0.ref, offset: $0.offset, size: $0.size, id: $1) }
    var again = TxPacketParser(maxSlots: p.maxSlots)
    var done = 0
    requests.withUnsafeBufferPointer { buffer in
        TxPacketEncoder.encode(fragments: buffer, extras: p.extras, flags: p.flags) { slot in
            do {
                if try again.consume(slot) { done += 1 }
            } catch {
                preconditionFailure("re-encoded packet refused: \(error)")
            }
        }
    }
    precondition(done == 1 && !again.isMidPacket)
    precondition(again.fragments == p.fragments && again.extras == p.extras && again.flags == p.flags
                 && again.responses == p.responses && again.totalSize == p.totalSize,
                 "round trip changed the packet")
}

private func fuzzRx(_ body: UnsafeRawBufferPointer, maxSlots: Int) {
    let stride = MemoryLayout<netif_rx_response>.size
    var parser = RxPacketParser(maxDataSlots: maxSlots)
    var consumed = 0
    for i in 0..<body.count / stride {
        let rsp = body.loadUnaligned(fromByteOffset: i * stride, as: netif_rx_response.self)
        if !parser.isMidPacket { consumed = 0 }
        consumed += 1
        let index = RingIndex(UInt32(truncatingIfNeeded: i &* 7919))
        let complete: Bool
        do { complete = try parser.consume(rsp, at: index) } catch {
            precondition(!parser.isMidPacket)
            precondition(parser.slots.count == consumed)
            continue
        }
        precondition(parser.slots.count == consumed && parser.slots.last == index)
        guard complete else { continue }
        precondition(parser.fragments.count >= 1 && parser.fragments.count <= maxSlots)
        var sum = 0
        for f in parser.fragments {
            precondition(Int(f.offset) + Int(f.size) <= XenPage.size)
            sum += Int(f.size)
        }
        precondition(sum == parser.totalSize)
        precondition(parser.slots.count == parser.fragments.count + parser.extras.count)
        // Re-encode each extra and decode it again.
        for (k, extra) in parser.extras.enumerated() {
            let raw = extra.encoded(more: k + 1 < parser.extras.count)
            precondition((try? NetExtraInfo(validating: raw)) == extra)
        }
    }
}
