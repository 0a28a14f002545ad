// Writes the seed inputs of every fuzz target from the project's own encoders:
// real blkif slots (both ABIs), netif tx/rx slots, xs_wire messages, daemon wire
// records, and store-operation and key-value selections.
//   .build-fuzz/debug/fuzz-seeds Fixtures/fuzz
// (Fuzz/run.sh seeds does this.) Built like the targets, so it carries a
// do-nothing LLVMFuzzerTestOneInput for libFuzzer's archive to link.
import CXen
import Foundation
import XenABI
import XenBlockProtocol
import XenNetProtocol
@testable import XenSimulatorClient
@testable import XenSimulatorDaemon
import XenStore

@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 { 0 }

let root = URL(fileURLWithPath: CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "Fixtures/fuzz")

func save(_ target: String, _ name: String, _ bytes: [UInt8]) {
    let dir = root.appendingPathComponent(target)
    try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try! Data(bytes).write(to: dir.appendingPathComponent("seed-" + name))
}
func bytes<T>(of value: T, count: Int = MemoryLayout<T>.size) -> [UInt8] {
    withUnsafeBytes(of: value) { Array($0.prefix(count)) }
}

// blkif: config byte (ABI in bit 0, every feature advertised) + slot (+ indirect page).
let segs: BlockSegments = [BlockSegment(gref: GrantRef(8), firstSector: 0, lastSector: 7),
                           BlockSegment(gref: GrantRef(9), firstSector: 1, lastSector: 3)]
var eleven = BlockSegments()
for i in 0..<11 { eleven.append(BlockSegment(gref: GrantRef(UInt32(100 + i)), firstSector: 0, lastSector: 7)) }
let requests: [(String, BlockRequest)] = [
    ("read", BlockRequest(id: 1, handle: 0, operation: .read(sector: 0, segments: segs))),
    ("write11", BlockRequest(id: 2, handle: 51712, operation: .write(sector: 2040, segments: eleven))),
    ("flush", BlockRequest(id: 3, operation: .flush(sector: 0, segments: []))),
    ("barrier", BlockRequest(id: 4, operation: .writeBarrier(sector: 8, segments: segs))),
    ("discard", BlockRequest(id: 5, operation: .discard(sector: 16, count: 64, secure: true))),
    ("indirect", BlockRequest(id: 6, operation: .indirect(
        IndirectRequest(operation: .write, sector: 24, segmentCount: 3, pages: [GrantRef(77)])))),
]
for abi in BlkifABI.allCases {
    for (name, r) in requests {
        var slot = bytes(of: r.encoded(abi: abi), count: abi.requestSize)
        if case .indirect = r.operation {
            var page = [UInt8](repeating: 0, count: 4096)
            let s = [BlockSegment(gref: GrantRef(1), firstSector: 0, lastSector: 7),
                     BlockSegment(gref: GrantRef(2), firstSector: 2, lastSector: 5),
                     BlockSegment(gref: GrantRef(3), firstSector: 7, lastSector: 7)]
            s.withUnsafeBufferPointer { b in page.withUnsafeMutableBytes { IndirectRequest.writeSegments(b, toPage: 0, at: $0.baseAddress!) } }
            slot += page.prefix(64)
        }
        save("blkif", "\(abi)-\(name)", [abi == .x86_32 ? 0x3d : 0x3c] + slot)
    }
    save("blkif", "\(abi)-response", [abi == .x86_32 ? 0x01 : 0x00]
         + bytes(of: BlockResponse(id: 9, operation: .write, status: .okay).encoded(abi: abi), count: abi.responseSize))
}

// netif tx: config byte (even: tx; maxSlots 18) + slots from TxPacketEncoder.
func txPacket(_ fragments: [TxFragmentRequest], extras: [NetExtraInfo], flags: NetTxFlags) -> [UInt8] {
    var out: [UInt8] = []
    fragments.withUnsafeBufferPointer { f in
        TxPacketEncoder.encode(fragments: f, extras: extras, flags: flags) { out += bytes(of: $0) }
    }
    return out
}
let mac = MACAddress(0x01, 0x00, 0x5e, 0, 0, 1)
let one = txPacket([TxFragmentRequest(ref: GrantRef(8), offset: 0, size: 60, id: 1)], extras: [], flags: [.checksumBlank])
let gso = txPacket([TxFragmentRequest(ref: GrantRef(8), offset: 2048, size: 2048, id: 1),
                    TxFragmentRequest(ref: GrantRef(9), offset: 0, size: 4096, id: 2),
                    TxFragmentRequest(ref: GrantRef(10), offset: 0, size: 100, id: 3)],
                   extras: [.gso(size: 1448, type: .tcpv4, features: 0), .hash(type: 1, algorithm: 1, value: 0xdead)],
                   flags: [.checksumBlank, .dataValidated])
let mcast = txPacket([TxFragmentRequest(ref: GrantRef(8), offset: 0, size: 14, id: 7)],
                     extras: [.multicastAdd(mac), .multicastDelete(mac)], flags: [])
save("netif", "tx-one", [0x22] + one)
save("netif", "tx-gso", [0x22] + gso)
save("netif", "tx-two-packets", [0x22] + mcast + one)
// netif rx: config byte (odd) + responses laid out by RxPacketLayout.
let layout = RxPacketLayout(length: 9000, extraCount: 1)!
let extras: [NetExtraInfo] = [.gso(size: 1448, type: .tcpv6, features: 0)]
var rx: [UInt8] = []
for k in 0..<layout.slotCount {
    if case .extra(let i) = layout.slot(k) { rx += bytes(of: RxPacketLayout.extraResponse(extras, index: i)) }
    else { rx += bytes(of: layout.response(slot: k, id: UInt16(k), flags: [.dataValidated])) }
}
save("netif", "rx-gso", [0x23] + rx)
save("netif", "rx-small", [0x23] + bytes(of: RxPacketLayout(length: 60)!.response(slot: 0, id: 3)))

// xs_wire: config byte (chunk size; bit 6: through the ring, with req_cons/req_prod) + stream.
let messages: [XenStoreMessage] = [
    XenStoreMessage(type: .read, requestID: 1, strings: ["device/vbd/51712/state"]),
    XenStoreMessage(type: .write, requestID: 2, payload: Array("device/vif/0/state\u{0}4".utf8)),
    XenStoreMessage(type: .directory, requestID: 3, strings: ["/local/domain/1"]),
    XenStoreMessage(type: .watch, requestID: 4, strings: ["backend/vbd", "tok"]),
    XenStoreMessage(type: .transactionStart, requestID: 5, strings: [""]),
    XenStoreMessage(type: .write, requestID: 6, transactionID: 1, payload: Array("data/x\u{0}1".utf8)),
    XenStoreMessage(type: .transactionEnd, requestID: 7, transactionID: 1, strings: ["T"]),
    XenStoreMessage(type: .setPermissions, requestID: 8, strings: ["data/x", "n1", "r0"]),
    XenStoreMessage(type: .getPermissions, requestID: 9, strings: ["data/x"]),
    XenStoreMessage(type: .directoryPart, requestID: 10, strings: ["/", "0"]),
    XenStoreMessage(type: .unwatch, requestID: 11, strings: ["backend/vbd", "tok"]),
    XenStoreMessage(type: .rm, requestID: 12, strings: ["data"]),
]
let stream = messages.flatMap { $0.encoded() }
save("xs-wire", "stream", [0x0f] + stream)
save("xs-wire", "stream-bytewise", [0x00] + stream.prefix(200))
let ringBytes = Array(stream.prefix(1000))
save("xs-wire", "ring", [0x40 | 0x07] + bytes(of: UInt32(0)) + bytes(of: UInt32(ringBytes.count)) + ringBytes)
save("xs-wire", "ring-wrapped", [0x40 | 0x1f] + bytes(of: UInt32(0xffff_fff0)) + bytes(of: UInt32(0xffff_fff0) &+ 64) + Array(stream.prefix(64)))
save("xs-wire", "oversized", [0x3f] + XenStoreMessage(type: .read, payload: []).encoded().prefix(12) + bytes(of: UInt32(4097)))

// xs-engine: 4-byte operations (kind, connection, path index, argument).
save("xs-engine", "write-read", [0, 1, 12, 0x21, 2, 1, 12, 0, 2, 2, 3, 0, 5, 0, 3, 0, 8, 1, 3, 0])
save("xs-engine", "perms", [0, 0, 6, 0x11, 7, 0, 6, 0x04, 2, 2, 6, 0, 2, 1, 6, 0, 7, 2, 6, 0x05, 4, 1, 6, 0])
save("xs-engine", "watch-tx", [9, 1, 11, 1, 11, 1, 0, 0, 0, 1, 11, 0x41, 12, 1, 0, 0x40, 0, 2, 3, 0x09, 10, 1, 11, 1])
save("xs-engine", "target", [13, 0, 0, 0x07, 0, 0, 8, 0x09, 7, 0, 8, 0x07, 2, 3, 8, 0, 5, 3, 7, 0, 14, 0, 0, 0x0a])

// daemon-wire: records as processes send them, and replies.
let records: [(String, WireMessage)] = [
    ("join-dom0", WireMessage([DaemonOp.join.rawValue, 0, 0, 0])),
    ("join-guest", WireMessage([DaemonOp.join.rawValue, 1, 256, 1])),
    ("map", WireMessage([DaemonOp.map.rawValue, 1, 1, 0, 8, 9])),
    ("bind", WireMessage([DaemonOp.bindInterdomain.rawValue, 1, 3])),
    ("failure", WireMessage.failure(.errno(.invalidArgument, "join first"))),
    ("report", WireMessage([0, 1, 2, 3, 2, 0, 1, 42])),
]
for (name, r) in records { save("daemon-wire", name, r.encoded()) }

// xenbus: a side byte (even: blkback, odd: blkfront), then one byte per key (0 absent,
// <0x80 an awkward value, else raw bytes). blkback's keys: protocol,
// multi-queue-num-queues, ring-page-order, ring-ref, ring-ref0..3, event-channel,
// queue-0/…, queue-1/…, feature-persistent, state. blkfront's: multi-queue-max-queues,
// max-ring-page-order, sectors, sector-size, info, mode, feature-max-indirect-segments,
// feature-flush-cache, feature-barrier, feature-discard.
save("xenbus", "frontend-plain", [1, 0x02, 0x01, 0x06, 0, 0, 0, 0x07, 0x01, 0x01, 0x01])
save("xenbus", "frontend-readonly", [1, 0x01, 0, 0x07, 0, 0x01, 0x81, 0x72, 0, 0x02, 0, 0])
save("xenbus", "single-ring", [0, 0x17, 0, 0, 0x06, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x04])
save("xenbus", "order-2", [0, 0x17, 0x01, 0x02, 0, 0x04, 0x05, 0x06, 0x07, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x03])
save("xenbus", "two-queues", [0, 0x18, 0x02, 0, 0, 0, 0, 0, 0, 0, 0x05, 0x01, 0x06, 0x02, 0, 0, 0, 0x05])
save("xenbus", "raw", [0, 0x83, 0x61, 0x72, 0x6d, 0x82, 0x31, 0x30, 0, 0x81, 0x38])
print("seeds written under \(root.path)")
