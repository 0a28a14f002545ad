import XenABI

/// Why a domain configuration was refused: where (file, line, setting) and what is
/// wrong, worded to say what would be right.
///
/// Its description reads like a compiler's, `guest.cfg:7: disk[1]: access "x" is not
/// one of r, ro, w, rw, w!`. A list element's key carries its index counted from 0
/// (`disk[1]` is the second disk), and its line is the element's own line.
public struct DomainConfigError: CodedError {
    /// What kind of refusal this is.
    public enum Code: Hashable, Sendable {
        /// The file is not xl.cfg syntax (an unterminated string, a missing `=`, …).
        case syntax
        /// A key xl does not know, or a disk or vif parameter it does not know.
        case unknownKey
        /// Something xl knows that XenPV does not do (a qcow2 disk, a cdrom, `ramdisk`).
        case unsupported
        /// A value of the wrong type or out of range.
        case invalidValue
        /// A required setting (`name`, `kernel`) or parameter (a disk's `vdev`) is absent.
        case missing
        /// A key or a parameter given twice.
        case duplicate
        /// The file could not be read.
        case unreadable
    }

    /// What kind of refusal this is.
    public var code: Code
    /// What is wrong and what would be right, without the location.
    public var message: String
    /// The file's name as given to the parser (`guest.cfg`), or nil before it is known.
    public var fileName: String?
    /// The line the refusal is about, counted from 1, or nil for the file as a whole.
    public var line: Int?
    /// The setting, `disk[1]` for a list element, or nil for a syntax error between settings.
    public var key: String?
    /// The error behind this one (a read error), if any.
    public var underlying: (any Error)?

    /// A refusal; the parser fills in the location it knows.
    public init(
        _ code: Code, _ message: String, fileName: String? = nil, line: Int? = nil, key: String? = nil,
        underlying: (any Error)? = nil
    ) {
        self.code = code
        self.message = message
        self.fileName = fileName
        self.line = line
        self.key = key
        self.underlying = underlying
    }

    /// `file:line: key: message`, leaving out what is unknown.
    public var description: String {
        var text = ""
        if let fileName { text += fileName + ":" }
        if let line { text += "\(line):" }
        if !text.isEmpty { text += " " }
        if let key { text += key + ": " }
        text += message
        if let underlying { text += " (\(underlying))" }
        return text
    }

    /// Equal when code, message, location and the cause's description are (the
    /// protocol's default would leave the location out).
    public static func == (a: Self, b: Self) -> Bool {
        a.code == b.code && a.message == b.message && a.fileName == b.fileName && a.line == b.line && a.key == b.key
            && a.underlying.map { "\($0)" } == b.underlying.map { "\($0)" }
    }

    /// Hashes code, message and location (the cause has no hash of its own).
    public func hash(into hasher: inout Hasher) {
        hasher.combine(code)
        hasher.combine(message)
        hasher.combine(fileName)
        hasher.combine(line)
        hasher.combine(key)
    }

    /// This error with the location filled in where it was still unknown.
    func located(fileName: String?, line: Int?, key: String?) -> DomainConfigError {
        var copy = self
        copy.fileName = copy.fileName ?? fileName
        copy.line = copy.line ?? line
        copy.key = copy.key ?? key
        return copy
    }
}

/// Quotes a value for an error message, escaping what would confuse a reader and
/// cutting it short so a hostile file cannot make a message unbounded.
func quoted(_ value: some StringProtocol) -> String {
    var out = "\""
    for (index, scalar) in value.unicodeScalars.enumerated() {
        if index == 64 {
            out += "…"
            break
        }
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7f {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
