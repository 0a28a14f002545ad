import XenABI

/// Why a value read from xenstore was refused: the node, what it held (cut short, so a
/// megabyte of garbage does not land in a log or an `error` key) and what was allowed.
public struct XenstoreValueError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Why the value was refused, for a caller to switch on.
    public enum Code: String, Hashable, Sendable {
        /// A key the peer must write is not there.
        case missing
        /// Not in the key's syntax (a sign, a space, hex, letters, empty, too long).
        case malformed
        /// In the syntax, but outside the allowed range (including above 2^64-1).
        case outOfRange
    }

    /// Why the value was refused.
    public var code: Code
    /// The full path of the node.
    public var key: String
    /// What the node held, at most ``shownLength`` characters; nil when missing.
    public var value: String?
    /// What was allowed, e.g. "a decimal in 1...4".
    public var expected: String

    /// Peer-controlled text kept in messages: enough to recognise, too little to flood.
    public static let shownLength = 40

    /// Creates an error for the node at `key`; `value` is cut to ``shownLength`` characters.
    public init(_ code: Code, key: String, value: String?, expected: String) {
        self.code = code
        self.key = key
        self.value = value.map { $0.count > Self.shownLength ? String($0.prefix(Self.shownLength)) + "…" : $0 }
        self.expected = expected
    }

    /// The node, what it held and what was expected, on one line.
    public var description: String {
        switch code {
        case .missing: "\(key) is missing (\(code.rawValue)): expected \(expected)"
        case .malformed, .outOfRange: "\(key) = \"\(value ?? "")\" (\(code.rawValue)): expected \(expected)"
        }
    }
}

/// The one parser for every value a driver, the toolstack or a daemon reads from xenstore.
///
/// Peers write these nodes, so each parse names an explicit range and fails with a
/// ``XenstoreValueError`` instead of trapping or guessing. The syntax is stricter than
/// Linux's `sscanf("%u")`: plain ASCII decimal digits only (no sign, no whitespace, no hex),
/// because everything Xen and its toolstacks write is in that form and anything else
/// is a peer probing the parser.
public enum XenstoreValue {
    /// Longest decimal accepted, leading zeros included: UInt64.max has 20 digits, and
    /// a bound keeps a hostile megabyte of zeros from being scanned.
    static let maxDigits = 20

    /// An unsigned decimal in `range`.
    public static func decimal<T: FixedWidthInteger & UnsignedInteger>(
        _ text: String, key: String, in range: ClosedRange<T>
    ) throws(XenstoreValueError) -> T {
        let expected = "a decimal in \(range.lowerBound)...\(range.upperBound)"
        let bytes = text.utf8
        guard !bytes.isEmpty, bytes.count <= maxDigits, bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            // All digits but too long is a number too big, not a syntax error.
            let code: XenstoreValueError.Code = !bytes.isEmpty && bytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })
                && bytes.contains(where: { $0 != 0x30 }) ? .outOfRange : .malformed
            throw XenstoreValueError(code, key: key, value: text, expected: expected)
        }
        var v: UInt64 = 0
        for b in bytes {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(b - 0x30))
            guard !o1, !o2 else { throw XenstoreValueError(.outOfRange, key: key, value: text, expected: expected) }
            v = s
        }
        guard let t = T(exactly: v), range.contains(t) else {
            throw XenstoreValueError(.outOfRange, key: key, value: text, expected: expected)
        }
        return t
    }

    /// A `feature-*` or other flag: exactly "0" or "1".
    public static func flag(_ text: String, key: String) throws(XenstoreValueError) -> Bool {
        switch text {
        case "1": return true
        case "0": return false
        default: throw XenstoreValueError(.malformed, key: key, value: text, expected: "0 or 1")
        }
    }

    /// One of a fixed set of names (a ring `protocol`, a disk `mode`).
    public static func choice(_ text: String, key: String, among names: [String]) throws(XenstoreValueError) -> String {
        guard names.contains(text) else {
            throw XenstoreValueError(.malformed, key: key, value: text, expected: "one of \(names.joined(separator: ", "))")
        }
        return text
    }

    /// A `state` node: a decimal naming a `XenbusState` (0...8).
    public static func state(_ text: String, key: String) throws(XenstoreValueError) -> XenbusState {
        let raw: UInt32 = try decimal(text, key: key, in: 0...XenbusState.reconfigured.rawValue)
        // In range, so it names a case; the fallback only keeps this total.
        return XenbusState(rawValue: raw) ?? .unknown
    }

    /// The grant references a peer can name for a ring page: any `grant_ref_t` past the
    /// reserved entries (which belong to xenstore and the console).
    public static let grantRefs = GrantRef.reservedCount...UInt32.max

    /// A grant reference (`ring-ref`, `tx-ring-ref`, …).
    public static func grantRef(_ text: String, key: String) throws(XenstoreValueError) -> GrantRef {
        GrantRef(try decimal(text, key: key, in: grantRefs))
    }

    /// The event channel ports a peer can name: port 0 is never bound, and FIFO event
    /// channels (`EVTCHN_FIFO_NR_CHANNELS`, 2^17) are the most any Xen has.
    public static let eventPorts: ClosedRange<UInt32> = 1...(1 << 17) - 1

    /// An event channel port (`event-channel`, `event-channel-tx`, …).
    public static func eventPort(_ text: String, key: String) throws(XenstoreValueError) -> EventPort {
        EventPort(try decimal(text, key: key, in: eventPorts))
    }

    /// The ids a real domain can have (below `DOMID_FIRST_RESERVED`).
    public static let domainIDs: ClosedRange<UInt16> = 0...DomainID.firstReserved.rawValue - 1

    /// A domain id (`backend-id`, `frontend-id`, `domid`).
    public static func domainID(_ text: String, key: String) throws(XenstoreValueError) -> DomainID {
        DomainID(try decimal(text, key: key, in: domainIDs))
    }

    /// A MAC address as the toolstack writes `mac`: six pairs of hex digits, colon-separated.
    public static func macAddress(_ text: String, key: String) throws(XenstoreValueError) -> [UInt8] {
        let expected = "a MAC address, six hex pairs like 00:16:3e:00:00:01"
        let bytes = Array(text.utf8)
        guard bytes.count == 17 else { throw XenstoreValueError(.malformed, key: key, value: text, expected: expected) }
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x41...0x46: c - 0x41 + 10
            case 0x61...0x66: c - 0x61 + 10
            default: nil
            }
        }
        var out: [UInt8] = []
        for i in 0..<6 {
            guard let hi = hex(bytes[i * 3]), let lo = hex(bytes[i * 3 + 1]), i == 5 || bytes[i * 3 + 2] == 0x3A else {
                throw XenstoreValueError(.malformed, key: key, value: text, expected: expected)
            }
            out.append(hi << 4 | lo)
        }
        return out
    }

    /// A frontend's `backend` node, which the guest owns and so can point anywhere:
    /// accepted only in the toolstack's layout for this very device
    /// (`/local/domain/<be>/backend/<type>/<fe>/<id>`), so a privileged reader never acts
    /// on a path the guest chose.
    public static func backendPath(_ text: String, key: String, of device: XenbusDevice) throws(XenstoreValueError) -> XenbusDevice {
        let expected = "/local/domain/<backend>/backend/\(device.type)/\(device.frontendDomain.rawValue)/\(device.id)"
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 8, parts[0].isEmpty, parts[1] == "local", parts[2] == "domain", parts[4] == "backend",
              parts[5] == device.type, parts[6] == "\(device.frontendDomain.rawValue)", parts[7] == "\(device.id)" else {
            throw XenstoreValueError(.malformed, key: key, value: text, expected: expected)
        }
        var found = device
        found.backendDomain = try domainID(String(parts[3]), key: key)
        return found
    }
}
