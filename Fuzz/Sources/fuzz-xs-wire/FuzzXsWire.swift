// xs_wire: the frame decoder every xenstore connection runs on a peer's bytes,
// the per-domain ring a guest writes (its producer index included), the
// message accessors, and the engine answering each decoded request.
//
// Input: byte 0 picks how the stream is cut into reads (1..64 bytes at a time)
// and whether it arrives through a XenStoreDomainRing page whose req_cons and
// req_prod come from the next 8 bytes; the rest is the byte stream.
// Invariants: no trap; each decoded message re-encodes to exactly the bytes it
// came from; a header announcing more than XENSTORE_PAYLOAD_MAX is refused
// before its payload is buffered; the decoder never holds more than one
// message's worth of unconsumed bytes beyond what was appended; the ring never
// returns more than it holds; the engine answers every request exactly once,
// with the request's id.
import CXen
import XenABI
import XenStore
import XenStoreServer

func fuzzOne(_ input: UnsafeRawBufferPointer) {
    guard let config = input.first else { return }
    var body = UnsafeRawBufferPointer(rebasing: input.dropFirst())
    let chunk = 1 + Int(config & 63)

    var stream: [UInt8]
    if config & 64 != 0, body.count >= 8 {
        stream = throughRing(body)
    } else {
        stream = Array(body)
    }
    body = UnsafeRawBufferPointer(start: nil, count: 0)

    var decoder = XenStoreFrameDecoder()
    var offset = 0      // bytes appended so far
    var consumed = 0    // bytes of complete messages returned
    var messages: [XenStoreMessage] = []
    feeding: while offset < stream.count {
        let end = min(stream.count, offset + chunk)
        decoder.append(stream[offset..<end])
        offset = end
        while true {
            let message: XenStoreMessage?
            do { message = try decoder.next() } catch {
                // Only an oversized length is refused, and only once its header is in.
                let len = stream.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: consumed + 12, as: UInt32.self) }
                precondition(len > UInt32(XenStoreLimits.payloadMax), "refused a frame of \(len) bytes")
                break feeding
            }
            guard let message else { break }
            let encoded = message.encoded()
            precondition(encoded.elementsEqual(stream[consumed..<(consumed + encoded.count)]),
                         "message does not re-encode to its bytes")
            consumed += encoded.count
            check(message)
            messages.append(message)
        }
        precondition(decoder.bufferedByteCount == offset - consumed)
        precondition(decoder.bytesWanted >= 0 && decoder.bytesWanted <= XenStoreLimits.headerSize + XenStoreLimits.payloadMax)
    }

    // Every request gets exactly one reply, carrying its request id; as a guest and as dom0.
    let engine = XenStoreEngine()
    let guestConnection = engine.connect(domain: DomainID(1))
    for (i, message) in messages.prefix(32).enumerated() {
        let asGuest = i & 1 == 0
        if asGuest {
            engine.handle(message, from: guestConnection)
            let out = engine.takeOutbox()
            let replies = out.filter { $0.connection == guestConnection && !$0.isWatchEvent }
            precondition(replies.count == 1 && replies[0].message.requestID == message.requestID,
                         "\(message): \(replies.count) replies")
        } else {
            let reply = engine.perform(message, as: .dom0)
            precondition(reply.requestID == message.requestID)
            _ = engine.takeOutbox()
        }
    }
}

/// The accessors a server or client uses on a message never trap, and agree.
func check(_ message: XenStoreMessage) {
    precondition(message.payload.count <= XenStoreLimits.payloadMax)
    let (terminated, tail) = message.nulSeparatedParts()
    precondition(terminated.reduce(0) { $0 + $1.count + 1 } + tail.count == message.payload.count)
    if let strings = try? message.strings() {
        precondition(tail.isEmpty && strings.count == terminated.count)
    } else {
        precondition(!tail.isEmpty)
    }
    _ = message.text
    _ = message.description
    var again = XenStoreFrameDecoder()
    again.append(message.encoded())
    precondition((try? again.next()) == message)
}

/// Lays the stream into a xenstore ring page as a guest would (indices from the input) and
/// reads it back from the daemon's side until it is empty or refuses the indices.
func throughRing(_ body: UnsafeRawBufferPointer) -> [UInt8] {
    let page = UnsafeMutableRawPointer.allocate(byteCount: Int(cxen_page_size), alignment: Int(cxen_page_size))
    defer { page.deallocate() }
    page.initializeMemory(as: UInt8.self, repeating: 0, count: Int(cxen_page_size))
    let cons = body.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
    let prod = body.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
    let data = UnsafeRawBufferPointer(rebasing: body.dropFirst(8).prefix(XenStoreDomainRing.size))
    let req = MemoryLayout<xenstore_domain_interface>.offset(of: \.req)!
    (page + req).copyMemory(from: data.baseAddress ?? UnsafeRawPointer(page), byteCount: data.count)
    page.storeBytes(of: cons, toByteOffset: MemoryLayout<xenstore_domain_interface>.offset(of: \.req_cons)!, as: UInt32.self)
    page.storeBytes(of: prod, toByteOffset: MemoryLayout<xenstore_domain_interface>.offset(of: \.req_prod)!, as: UInt32.self)

    let ring = XenStoreDomainRing(page: page, side: .daemon)
    let announced = prod &- cons
    var out: [UInt8] = []
    while true {
        let readable = ring.readable
        guard let bytes = try? ring.read(upTo: 100) else {
            precondition(announced > UInt32(XenStoreDomainRing.size), "refused a ring holding \(announced) bytes")
            break
        }
        precondition(bytes.count <= 100 && bytes.count == min(100, readable))
        if bytes.isEmpty { break }
        out += bytes
        precondition(out.count <= XenStoreDomainRing.size)
    }
    if announced <= UInt32(XenStoreDomainRing.size) { precondition(out.count == Int(announced)) }
    // Answer through the response half: never more than a ring's worth.
    let written = (try? ring.write(out + out)) ?? 0
    precondition(written <= XenStoreDomainRing.size)
    return out
}
