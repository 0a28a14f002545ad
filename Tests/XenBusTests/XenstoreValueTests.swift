import Testing
import XenABI
import XenBus

/// The one parser every xenstore value goes through: a table of what a peer might write,
/// each with what it must parse to or why it is refused.
@Suite
struct XenstoreValueTests {
    enum Outcome: Hashable, Sendable {
        case success(UInt64)
        case failure(XenstoreValueError.Code)
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var text: String
        var range: ClosedRange<UInt64>
        var expected: Outcome
        var testDescription: String { "\"\(text.prefix(24))\" in \(range)" }
    }

    static let decimals: [Case] = [
        Case(text: "0", range: 0...4, expected: .success(0)),
        Case(text: "4", range: 0...4, expected: .success(4)),
        Case(text: "007", range: 0...10, expected: .success(7)),
        Case(text: "18446744073709551615", range: 0...UInt64.max, expected: .success(UInt64.max)),
        Case(text: "18446744073709551615", range: 1...4, expected: .failure(.outOfRange)),  // the finding
        Case(text: "18446744073709551616", range: 0...UInt64.max, expected: .failure(.outOfRange)),  // 2^64
        Case(text: "99999999999999999999", range: 0...UInt64.max, expected: .failure(.outOfRange)),
        Case(text: "123456789012345678901234567890", range: 0...UInt64.max, expected: .failure(.outOfRange)),
        Case(text: String(repeating: "9", count: 1 << 20), range: 0...UInt64.max, expected: .failure(.outOfRange)),
        Case(text: String(repeating: "0", count: 64), range: 0...UInt64.max, expected: .failure(.malformed)),
        Case(text: "5", range: 1...4, expected: .failure(.outOfRange)),
        Case(text: "0", range: 1...4, expected: .failure(.outOfRange)),
        Case(text: "", range: 0...4, expected: .failure(.malformed)),
        Case(text: "-1", range: 0...4, expected: .failure(.malformed)),
        Case(text: "-0", range: 0...4, expected: .failure(.malformed)),
        Case(text: "+1", range: 0...4, expected: .failure(.malformed)),
        Case(text: " 1", range: 0...4, expected: .failure(.malformed)),
        Case(text: "1 ", range: 0...4, expected: .failure(.malformed)),
        Case(text: "1\n", range: 0...4, expected: .failure(.malformed)),
        Case(text: "0x1", range: 0...4, expected: .failure(.malformed)),
        Case(text: "1e3", range: 0...10000, expected: .failure(.malformed)),
        Case(text: "1.0", range: 0...4, expected: .failure(.malformed)),
        Case(text: "١", range: 0...4, expected: .failure(.malformed)),  // a non-ASCII digit
        Case(text: "abc", range: 0...4, expected: .failure(.malformed)),
    ]

    @Test(arguments: decimals)
    func decimal(_ c: Case) {
        let outcome: Outcome
        do { outcome = .success(try XenstoreValue.decimal(c.text, key: "/k", in: c.range)) } catch { outcome = .failure(error.code) }
        #expect(outcome == c.expected)
    }

    @Test func narrowTypesRefuseWhatDoesNotFitInsteadOfTrapping() {
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.decimal("65536", key: "/k", in: UInt16.min...UInt16.max) }
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.decimal("4294967296", key: "/k", in: UInt32.min...UInt32.max) }
        #expect((try? XenstoreValue.decimal("4294967295", key: "/k", in: UInt32.min...UInt32.max)) == UInt32.max)
    }

    @Test func theErrorNamesKeyValueAndRangeAndCutsLongValues() throws {
        let e = try #require(throws: XenstoreValueError.self) {
            try XenstoreValue.decimal("18446744073709551615", key: "/fe/multi-queue-num-queues", in: UInt32(1)...4)
        }
        #expect(e.code == .outOfRange)
        #expect("\(e)" == "/fe/multi-queue-num-queues = \"18446744073709551615\" (outOfRange): expected a decimal in 1...4")
        let long = try #require(throws: XenstoreValueError.self) {
            try XenstoreValue.flag(String(repeating: "x", count: 100_000), key: "/k")
        }
        #expect("\(long)".count < 200)
    }

    @Test func flagsAreExactlyZeroOrOne() {
        #expect((try? XenstoreValue.flag("1", key: "/k")) == true)
        #expect((try? XenstoreValue.flag("0", key: "/k")) == false)
        for bad in ["", "2", "true", "yes", " 1", "01", "+1", "-0"] {
            #expect(throws: XenstoreValueError.self, "\(bad)") { try XenstoreValue.flag(bad, key: "/k") }
        }
    }

    @Test func statesGrantRefsPortsAndDomainIDsHaveTheirRanges() {
        #expect((try? XenstoreValue.state("4", key: "/k")) == .connected)
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.state("9", key: "/k") }
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.state("+4", key: "/k") }
        #expect((try? XenstoreValue.grantRef("8", key: "/k")) == GrantRef(8))
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.grantRef("1", key: "/k") }  // reserved (xenstore)
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.grantRef("4294967296", key: "/k") }
        #expect((try? XenstoreValue.eventPort("1", key: "/k")) == EventPort(1))
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.eventPort("0", key: "/k") }
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.eventPort("131072", key: "/k") }
        #expect((try? XenstoreValue.domainID("32751", key: "/k")) == DomainID(32751))
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.domainID("32752", key: "/k") }  // DOMID_FIRST_RESERVED
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.domainID("65536", key: "/k") }
    }

    @Test func choicesAndMACAddresses() {
        #expect((try? XenstoreValue.choice("x86_64-abi", key: "/k", among: ["x86_64-abi", "x86_32-abi"])) == "x86_64-abi")
        #expect(throws: XenstoreValueError.self) { try XenstoreValue.choice("arm-abi", key: "/k", among: ["x86_64-abi"]) }
        #expect((try? XenstoreValue.macAddress("00:16:3E:0a:ff:01", key: "/k")) == [0, 0x16, 0x3e, 0x0a, 0xff, 0x01])
        for bad in ["", "00:16:3e:zz:00:01", "00:16:3e:00:00", "00:16:3e:00:00:01:02", "+0:16:3e:00:00:01",
                    "00-16-3e-00-00-01", "0:16:3e:00:00:001", " 00:16:3e:00:00:1"] {
            #expect(throws: XenstoreValueError.self, "\(bad)") { try XenstoreValue.macAddress(bad, key: "/k") }
        }
    }

    @Test func aFrontendsBackendPathMustBeItsOwnDevicesBackendDirectory() throws {
        let device = XenbusDevice(type: "vbd", id: 51712, frontend: DomainID(3))
        let found = try XenstoreValue.backendPath("/local/domain/0/backend/vbd/3/51712", key: "/k", of: device)
        #expect(found.backendPath == "/local/domain/0/backend/vbd/3/51712" && found.backendDomain == .dom0)
        for bad in ["/", "/local/domain/0", "/local/domain/0/backend/vbd/4/51712", "/local/domain/0/backend/vif/3/51712",
                    "/local/domain/0/backend/vbd/3/51712/..", "/local/domain/+0/backend/vbd/3/51712",
                    "/local/domain/0/backend/vbd/3/51713", "local/domain/0/backend/vbd/3/51712"] {
            #expect(throws: XenstoreValueError.self, "\(bad)") { try XenstoreValue.backendPath(bad, key: "/k", of: device) }
        }
    }
}
