import Testing
@testable import XenBlockStorage

/// The engine's book of registered memory: which slot holds a buffer, and which memory may
/// not be registered twice.
@Suite struct RegisteredBuffersTests {
    /// Regions at made-up addresses (never dereferenced).
    func memory(_ start: Int, _ count: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: start), count: count)
    }

    func register(_ book: inout RegisteredBuffers, _ start: Int, _ count: Int) -> Int32? {
        guard let slot = book.slotFor(memory(start, count)) else { return nil }
        book.record(memory(start, count), slot: slot)
        return slot
    }

    @Test func aBufferIsHeldOnlyWhollyInsideOneRegion() throws {
        var book = RegisteredBuffers(capacity: 8)
        let a = try #require(register(&book, 0x10000, 0x4000))
        let b = try #require(register(&book, 0x14000, 0x1000))  // adjacent, after a
        let c = try #require(register(&book, 0x8000, 0x1000))  // before a
        #expect(Set([a, b, c]).count == 3 && book.count == 3)
        func at(_ address: Int, _ length: Int) -> Int32? {
            book.slot(holding: UnsafeRawPointer(bitPattern: address)!, length: length)
        }
        #expect(at(0x10000, 0x4000) == a && at(0x13000, 0x1000) == a && at(0x10200, 0x200) == a)
        #expect(at(0x14000, 0x1000) == b && at(0x8000, 0x1000) == c)
        #expect(at(0x13000, 0x2000) == nil, "straddles two regions")
        #expect(at(0x14800, 0x1000) == nil, "runs past the last")
        #expect(at(0x9000, 0x1000) == nil && at(0x7000, 0x1000) == nil && at(0x20000, 0x10) == nil)
        #expect(at(0x7fff, 0x2) == nil, "starts before a region")
    }

    @Test func overlappingMemoryAndAFullTableAreRefused() throws {
        var book = RegisteredBuffers(capacity: 2)
        _ = try #require(register(&book, 0x10000, 0x4000))
        #expect(book.slotFor(memory(0x13000, 0x2000)) == nil, "overlaps the end")
        #expect(book.slotFor(memory(0xf000, 0x2000)) == nil, "overlaps the start")
        #expect(book.slotFor(memory(0x11000, 0x1000)) == nil, "inside")
        #expect(book.slotFor(memory(0x8000, 0x10000)) == nil, "around")
        #expect(book.slotFor(memory(0x14000, 0)) == nil, "empty")
        let second = try #require(register(&book, 0x14000, 0x1000))
        #expect(book.slotFor(memory(0x20000, 0x1000)) == nil, "no free slot")
        #expect(book.remove(slot: second) && !book.remove(slot: second))
        #expect(book.slot(holding: UnsafeRawPointer(bitPattern: 0x14000)!, length: 1) == nil)
        #expect(register(&book, 0x20000, 0x1000) == second, "the slot is free again")
        #expect(book.count == 2)
    }

    @Test func manyRegionsAreFoundByAddress() throws {
        var book = RegisteredBuffers(capacity: 512)
        // Registered out of order, every other page.
        for k in (0..<256).map({ ($0 * 97) % 256 }) {
            _ = try #require(register(&book, 0x100000 + k * 0x2000, 0x1000))
        }
        for k in 0..<256 {
            let page = UnsafeRawPointer(bitPattern: 0x100000 + k * 0x2000)!
            #expect(book.slot(holding: page, length: 0x1000) != nil)
            #expect(book.slot(holding: page + 0x1000, length: 0x1000) == nil)
        }
    }
}
