/// One value in an xl.cfg file: a number, a string, or a list of numbers and strings.
public enum XLValue: Hashable, Sendable {
    /// A number: decimal digits, or `0x` and hex digits, as `strtol(…, 0)` reads them.
    case number(Int64)
    /// A `'single'` or `"double"`-quoted string, its escapes resolved.
    case string(String)
    /// `[ a, b, … ]`: each element a number or a string, with the line it is on.
    case list([XLListElement])

    /// What kind of value this is, for error messages.
    var kind: String {
        switch self {
        case .number: "a number"
        case .string: "a string"
        case .list: "a list"
        }
    }
}

/// One element of an xl.cfg list: a number or a string (lists do not nest) and its line.
public struct XLListElement: Hashable, Sendable {
    /// The element; never `.list`.
    public var value: XLValue
    /// The line it is on, counted from 1 (a list may span lines).
    public var line: Int

    /// An element on a line.
    public init(_ value: XLValue, line: Int) {
        self.value = value
        self.line = line
    }
}

/// One `KEY = VALUE` setting and the line its key is on.
public struct XLSetting: Hashable, Sendable {
    /// The key, as written (`[A-Za-z_][A-Za-z0-9_.]*`).
    public var key: String
    /// The value.
    public var value: XLValue
    /// The key's line, counted from 1.
    public var line: Int

    /// A setting.
    public init(key: String, value: XLValue, line: Int) {
        self.key = key
        self.value = value
        self.line = line
    }
}

/// An xl.cfg(5) file read into its settings, in file order, with nothing interpreted.
///
/// The syntax is the part of xl's config parser (libxlu) that domain configs use:
/// - `KEY = VALUE`, one per line, or several on a line each ended by `;`;
///   a `;` may end any setting;
/// - VALUE is a number (`128`, `0x80`), a `'single'` or `"double"`-quoted string
///   (escapes `\\`, `\'`, `\"`, `\n`, `\t`, `\r`, `\a`, `\b`, `\f`, `\v` as libxlu's;
///   a string does not span lines),
///   or a list `[ v, v, … ]` of numbers and strings that may span lines, may hold
///   comments and blank lines, and may end with a trailing comma;
/// - `#` starts a comment that runs to the end of the line, outside strings.
///
/// Refused with a ``DomainConfigError`` naming the line: anything else, including
/// libxlu's `KEY += VALUE` and `"a" + "b"` (not supported here), nested lists, the
/// `\xHH` and octal escapes (which libxlu accepts but drops), a key given twice (xl
/// keeps the last one; here it is a mistake to point out), a
/// number that does not fit in 64 bits, bytes that are not UTF-8, and a file larger
/// than ``maximumSize``.
public struct XLConfigFile: Hashable, Sendable {
    /// The largest file read: a domain config is a few hundred bytes; a megabyte is
    /// a mistake (or a hostile file), and bounds the parser's time and memory.
    public static let maximumSize = 1 << 20

    /// The name used in error messages.
    public var fileName: String
    /// The settings in file order; no key appears twice.
    public var settings: [XLSetting]

    /// Parses `text`, naming `fileName` in any error.
    public init(parsing text: String, fileName: String) throws(DomainConfigError) {
        try self.init(parsing: Array(text.utf8), fileName: fileName)
    }

    /// Parses the bytes of a file, naming `fileName` in any error.
    public init(parsing bytes: [UInt8], fileName: String) throws(DomainConfigError) {
        self.fileName = fileName
        guard bytes.count <= Self.maximumSize else {
            throw DomainConfigError(
                .invalidValue, "the file is \(bytes.count) bytes; a domain config must be at most \(Self.maximumSize)",
                fileName: fileName)
        }
        var parser = XLParser(bytes: bytes, fileName: fileName)
        settings = try parser.parseFile()
    }

    /// The setting for `key`, if the file has one.
    public subscript(key: String) -> XLSetting? { settings.first { $0.key == key } }
}

/// A hand-written recursive-descent parser over the file's bytes: one token of
/// look-ahead, newlines significant outside lists.
struct XLParser {
    let bytes: [UInt8]
    let fileName: String
    var index = 0
    var line = 1

    init(bytes: [UInt8], fileName: String) {
        self.bytes = bytes
        self.fileName = fileName
    }

    func error(_ message: String, line: Int? = nil, key: String? = nil) -> DomainConfigError {
        DomainConfigError(.syntax, message, fileName: fileName, line: line ?? self.line, key: key)
    }

    var current: UInt8? { index < bytes.count ? bytes[index] : nil }

    /// Skips spaces, tabs, carriage returns and comments; with `newlines`, newlines too.
    mutating func skipBlank(newlines: Bool) {
        while let byte = current {
            if byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\r") {
                index += 1
            } else if byte == UInt8(ascii: "#") {
                while let b = current, b != UInt8(ascii: "\n") { index += 1 }
            } else if newlines && byte == UInt8(ascii: "\n") {
                index += 1
                line += 1
            } else {
                return
            }
        }
    }

    static func isKeyStart(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
            || b == UInt8(ascii: "_")
    }

    static func isKeyByte(_ b: UInt8) -> Bool {
        isKeyStart(b) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || b == UInt8(ascii: ".")
    }

    mutating func parseFile() throws(DomainConfigError) -> [XLSetting] {
        var settings: [XLSetting] = []
        var seen: [String: Int] = [:]
        while true {
            skipBlank(newlines: true)
            guard let byte = current else { return settings }
            if byte == UInt8(ascii: ";") {
                index += 1
                continue
            }
            guard Self.isKeyStart(byte) else {
                throw error("expected a setting `KEY = VALUE`, found \(describe(byte))")
            }
            let keyLine = line
            let start = index
            while let b = current, Self.isKeyByte(b) { index += 1 }
            let key = String(decoding: bytes[start..<index], as: UTF8.self)
            skipBlank(newlines: false)
            if current == UInt8(ascii: "+") {
                throw error("`+=` and `+` are not supported here; write the whole value after `=`", key: key)
            }
            guard current == UInt8(ascii: "=") else {
                throw error("expected `=` after the key, found \(current.map(describe) ?? "the end of the file")", key: key)
            }
            index += 1
            skipBlank(newlines: false)
            let value = try parseValue(key: key)
            // The setting ends at a `;`, a newline (after blanks and a comment) or the end.
            skipBlank(newlines: false)
            if let b = current {
                if b == UInt8(ascii: ";") {
                    index += 1
                } else if b != UInt8(ascii: "\n") {
                    if b == UInt8(ascii: "+") {
                        throw error("`+` (string concatenation) is not supported here; write one string", key: key)
                    }
                    throw error("expected the end of the line or `;` after the value, found \(describe(b))", key: key)
                }
            }
            if let first = seen[key] {
                throw DomainConfigError(
                    .duplicate, "set twice (first on line \(first)); keep one setting", fileName: fileName, line: keyLine,
                    key: key)
            }
            seen[key] = keyLine
            settings.append(XLSetting(key: key, value: value, line: keyLine))
        }
    }

    mutating func parseValue(key: String) throws(DomainConfigError) -> XLValue {
        guard let byte = current else { throw error("expected a value after `=`, found the end of the file", key: key) }
        if byte == UInt8(ascii: "[") {
            index += 1
            return .list(try parseListRest(key: key))
        }
        return try parseAtom(key: key)
    }

    mutating func parseAtom(key: String) throws(DomainConfigError) -> XLValue {
        guard let byte = current else { throw error("expected a value, found the end of the file", key: key) }
        if byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\"") {
            return .string(try parseString(quote: byte, key: key))
        }
        if byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") {
            return .number(try parseNumber(key: key))
        }
        if byte == UInt8(ascii: "[") {
            throw error("lists do not nest; an element is a number or a quoted string", key: key)
        }
        if byte == UInt8(ascii: "\n") {
            throw error("expected a value after `=`, found the end of the line", key: key)
        }
        throw error("expected a number, a quoted string or a list, found \(describe(byte)); quote strings", key: key)
    }

    mutating func parseNumber(key: String) throws(DomainConfigError) -> Int64 {
        let start = index
        while let b = current, Self.isKeyByte(b) { index += 1 }
        let text = String(decoding: bytes[start..<index], as: UTF8.self)
        let digits: Substring
        let radix: Int
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            digits = text.dropFirst(2)
            radix = 16
        } else {
            digits = Substring(text)
            radix = 10
        }
        // Int64(_:radix:) also takes a sign; the digits alone are checked first.
        guard !digits.isEmpty, digits.allSatisfy({ $0.isHexDigit && (radix == 16 || $0.isNumber) }),
            let value = Int64(digits, radix: radix)
        else {
            throw error("\(quoted(text)) is not a number (decimal digits, or 0x and hex digits, at most \(Int64.max))", key: key)
        }
        return value
    }

    mutating func parseString(quote: UInt8, key: String) throws(DomainConfigError) -> String {
        let startLine = line
        index += 1
        var out: [UInt8] = []
        while true {
            guard let b = current, b != UInt8(ascii: "\n") else {
                throw error("the string has no closing \(quote == UInt8(ascii: "'") ? "'" : "\"") on its line", line: startLine, key: key)
            }
            index += 1
            if b == quote { break }
            if b == UInt8(ascii: "\\") {
                guard let e = current, e != UInt8(ascii: "\n") else {
                    throw error("a `\\` ends the line inside a string; strings do not span lines", key: key)
                }
                index += 1
                switch e {
                case UInt8(ascii: "\\"), UInt8(ascii: "'"), UInt8(ascii: "\""): out.append(e)
                case UInt8(ascii: "n"): out.append(UInt8(ascii: "\n"))
                case UInt8(ascii: "t"): out.append(UInt8(ascii: "\t"))
                case UInt8(ascii: "r"): out.append(UInt8(ascii: "\r"))
                case UInt8(ascii: "a"): out.append(0x07)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "v"): out.append(0x0b)
                default:
                    // libxlu also reads \xHH and \NNN but, as of Xen 4.x, drops the character
                    // it decodes; refusing them beats meaning something else than xl.
                    throw error("unknown escape `\\\(describeBare(e))` in a string; use \\\\, \\', \\\", \\n, \\t, \\r, \\a, \\b, \\f or \\v", key: key)
                }
                continue
            }
            if b == 0 { throw error("a NUL byte inside a string", key: key) }
            out.append(b)
        }
        guard let text = String(validating: out, as: UTF8.self) else {
            throw error("the string is not valid UTF-8", line: startLine, key: key)
        }
        return text
    }

    /// After `[`: elements separated by commas, a trailing comma allowed, up to `]`.
    mutating func parseListRest(key: String) throws(DomainConfigError) -> [XLListElement] {
        let openLine = line
        var elements: [XLListElement] = []
        while true {
            skipBlank(newlines: true)
            guard let b = current else {
                throw error("the list opened on line \(openLine) has no closing `]`", line: openLine, key: key)
            }
            if b == UInt8(ascii: "]") {
                index += 1
                return elements
            }
            let elementLine = line
            let value = try parseAtom(key: "\(key)[\(elements.count)]")
            elements.append(XLListElement(value, line: elementLine))
            skipBlank(newlines: true)
            guard let next = current else {
                throw error("the list opened on line \(openLine) has no closing `]`", line: openLine, key: key)
            }
            if next == UInt8(ascii: ",") {
                index += 1
            } else if next != UInt8(ascii: "]") {
                throw error("expected `,` or `]` in the list, found \(describe(next))", key: key)
            }
        }
    }

    func describeBare(_ b: UInt8) -> String {
        b >= 0x21 && b < 0x7f ? String(UnicodeScalar(b)) : "\\x" + String(b, radix: 16)
    }

    func describe(_ b: UInt8) -> String {
        switch b {
        case UInt8(ascii: "\n"): "the end of the line"
        case UInt8(ascii: " "): "a space"
        default: b >= 0x21 && b < 0x7f ? "`\(String(UnicodeScalar(b)))`" : "byte 0x\(String(b, radix: 16))"
        }
    }
}
