import Testing
import XenNetProtocol

/// The flow hash that picks a multi-queue vif's queue: the same for every frame of a flow
/// and for its reverse, different flows spread, and any bytes at all are safe.
@Suite(.timeLimit(.minutes(5)))
struct FlowHashTests {
    /// An Ethernet frame: IPv4 (or IPv6) from `src`:`sport` to `dst`:`dport`, protocol `proto`.
    private func frame(v6: Bool = false, src: UInt8, dst: UInt8, proto: UInt8 = 6, sport: UInt16, dport: UInt16,
                       fragment: UInt16 = 0, vlan: Bool = false, payload: UInt8 = 0) -> [UInt8] {
        var f: [UInt8] = [0, 0x16, 0x3e, 0, 0, 1, 0, 0x16, 0x3e, 0, 0, 2]
        if vlan { f += [0x81, 0x00, 0x00, 0x07] }
        if v6 {
            f += [0x86, 0xdd, 0x60, 0, 0, 0, 0, 40, proto, 64]
            f += [UInt8](repeating: 0xfd, count: 15) + [src] + [UInt8](repeating: 0xfd, count: 15) + [dst]
        } else {
            f += [0x08, 0x00, 0x45, 0, 0, 60, 0, 0, UInt8(fragment >> 8), UInt8(fragment & 0xff), 64, proto, 0, 0,
                  10, 0, 0, src, 10, 0, 0, dst]
        }
        f += [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(dport >> 8), UInt8(dport & 0xff)]
        f += [UInt8](repeating: payload, count: 40)
        return f
    }

    private func hash(_ f: [UInt8]) -> UInt32 { f.withUnsafeBytes { FlowHash.of($0) } }

    @Test func aFlowAndItsReverseHashAlikeWhateverTheyCarry() {
        for v6 in [false, true] {
            let out = hash(frame(v6: v6, src: 1, dst: 2, sport: 40000, dport: 5201, payload: 1))
            #expect(out != 0)
            #expect(out == hash(frame(v6: v6, src: 1, dst: 2, sport: 40000, dport: 5201, payload: 9)))
            #expect(out == hash(frame(v6: v6, src: 2, dst: 1, sport: 5201, dport: 40000)))
            #expect(out != hash(frame(v6: v6, src: 1, dst: 2, sport: 40001, dport: 5201)))
        }
        // A VLAN tag does not change the flow; UDP counts its ports too.
        #expect(hash(frame(src: 1, dst: 2, sport: 1, dport: 2, vlan: true)) == hash(frame(src: 1, dst: 2, sport: 1, dport: 2)))
        #expect(hash(frame(src: 1, dst: 2, proto: 17, sport: 1, dport: 2)) != hash(frame(src: 1, dst: 2, proto: 17, sport: 1, dport: 3)))
    }

    @Test func fragmentsHashByAddressesOnly() {
        // More fragments, or an offset: the "ports" are payload, so they do not count.
        let a = hash(frame(src: 1, dst: 2, proto: 17, sport: 1, dport: 2, fragment: 0x2000))
        let b = hash(frame(src: 1, dst: 2, proto: 17, sport: 7, dport: 9, fragment: 0x0010))
        #expect(a == b)
    }

    @Test func manyFlowsSpreadOverTwoAndFourQueues() {
        for count in [2, 4] {
            var perQueue = [Int](repeating: 0, count: count)
            for port in 0 ..< 1000 {
                let f = frame(src: 1, dst: 2, sport: UInt16(30000 + port), dport: 5201)
                perQueue[f.withUnsafeBytes { FlowHash.queue(of: $0, among: count) }] += 1
            }
            // Each queue gets a fair share (1000 / count ± 40 %).
            #expect(perQueue.allSatisfy { Double($0) > 0.6 * 1000 / Double(count) }, "\(perQueue)")
        }
        #expect(frame(src: 1, dst: 2, sport: 1, dport: 2).withUnsafeBytes { FlowHash.queue(of: $0, among: 1) } == 0)
    }

    @Test func anythingElseHashesToZeroAndNothingTraps() {
        // ARP, and every truncation of a TCP frame.
        var arp = frame(src: 1, dst: 2, sport: 1, dport: 2)
        arp[12] = 0x08; arp[13] = 0x06
        #expect(hash(arp) == 0)
        let full = frame(v6: true, src: 1, dst: 2, sport: 1, dport: 2, vlan: true)
        for n in 0 ... full.count { _ = hash(Array(full.prefix(n))) }
        #expect(hash([]) == 0 && hash([0x08]) == 0)
        // A bad IPv4 header length or version.
        var bad = frame(src: 1, dst: 2, sport: 1, dport: 2)
        bad[14] = 0x41
        #expect(hash(bad) == 0)
        bad[14] = 0x55
        #expect(hash(bad) == 0)
        // Random bytes.
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        for _ in 0 ..< 2000 {
            var bytes: [UInt8] = []
            for _ in 0 ..< Int(state % 120) {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                bytes.append(UInt8(truncatingIfNeeded: state >> 33))
            }
            if bytes.count > 13, state & 1 == 0 { bytes[12] = 0x08; bytes[13] = 0x00 }
            _ = hash(bytes)
            state = state &* 6364136223846793005 &+ 1442695040888963407
        }
    }
}
