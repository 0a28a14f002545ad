import Testing
import XenToolstack

/// The file syntax: settings, values, lists across lines, comments, `;`.
@Suite struct XLConfigFileTests {
    func parse(_ text: String) throws -> [XLSetting] { try XLConfigFile(parsing: text, fileName: "t.cfg").settings }

    func refusal(_ text: String) -> DomainConfigError? {
        do {
            _ = try XLConfigFile(parsing: text, fileName: "t.cfg")
            return nil
        } catch {
            return error
        }
    }

    @Test func numbersStringsAndLists() throws {
        let settings = try parse(
            """
            a = 1
            b='single'
            c = "double"   # a comment
            d = [ 'x', "y", 3 ]
            e = 0x1F
            """)
        #expect(settings.map(\.key) == ["a", "b", "c", "d", "e"])
        #expect(settings.map(\.line) == [1, 2, 3, 4, 5])
        #expect(settings[0].value == .number(1))
        #expect(settings[1].value == .string("single"))
        #expect(settings[2].value == .string("double"))
        #expect(settings[3].value == .list([.init(.string("x"), line: 4), .init(.string("y"), line: 4), .init(.number(3), line: 4)]))
        #expect(settings[4].value == .number(31))
    }

    @Test func listsSpanLinesWithCommentsBlankLinesAndATrailingComma() throws {
        let settings = try parse(
            """
            # leading comment

            disk = [   # opens here
                'one',  # first

                "two",
                # a comment line inside
                'three',
            ]
            after = 'x'
            """)
        guard case .list(let elements) = settings[0].value else {
            Issue.record("not a list")
            return
        }
        #expect(settings[0].line == 3)
        #expect(elements.map(\.value) == [.string("one"), .string("two"), .string("three")])
        #expect(elements.map(\.line) == [4, 6, 8])
        #expect(settings[1].key == "after" && settings[1].line == 10)
    }

    @Test func semicolonsEndSettingsAndMaySeparateThemOnALine() throws {
        let settings = try parse("a = 1; b = 'x';\n;\nc = []\n")
        #expect(settings.map(\.key) == ["a", "b", "c"])
        #expect(settings[2].value == .list([]))
    }

    @Test func escapesInStrings() throws {
        let settings = try parse(##"a = "q\"u\\o\tt\n" ; b = 'it\'s' ; c = "#not a comment""##)
        #expect(settings[0].value == .string("q\"u\\o\tt\n"))
        #expect(settings[1].value == .string("it's"))
        #expect(settings[2].value == .string("#not a comment"))
        #expect(try parse(#"a = '\a\b\f\v'"#)[0].value == .string("\u{7}\u{8}\u{c}\u{b}"))
    }

    @Test func emptyFileAndCommentsOnly() throws {
        #expect(try parse("").isEmpty)
        #expect(try parse("# nothing\n\n   # more\n").isEmpty)
    }

    @Test func syntaxErrorsNameTheirLineAndKey() {
        let cases: [(String, Int, String?, String)] = [
            ("a = 1\nb = 'open\n", 2, "b", "no closing '"),
            ("a = 1\n\nb 2\n", 3, "b", "expected `=`"),
            ("a = [ 'x'\n'y' ]\n", 2, "a", "expected `,` or `]`"),
            ("a = [ 'x',\n", 1, "a", "no closing `]`"),
            ("a = bare\n", 1, "a", "quote strings"),
            ("a = 1 2\n", 1, "a", "end of the line"),
            ("a = 12abc\n", 1, "a", "not a number"),
            ("a = 99999999999999999999\n", 1, "a", "not a number"),
            ("a = [ [ 'x' ] ]\n", 1, "a[0]", "do not nest"),
            ("a += [ 'x' ]\n", 1, "a", "not supported"),
            ("a = 'x' + 'y'\n", 1, "a", "not supported"),
            ("a = 1\n= 2\n", 2, nil, "expected a setting"),
            ("a =\n", 1, "a", "end of the line"),
            ("a = '\\q'\n", 1, "a", "unknown escape"),
            ("a = '\\x41'\n", 1, "a", "unknown escape"),
            ("a = '\\101'\n", 1, "a", "unknown escape"),
            ("a = 1\nb = 2\na = 3\n", 3, "a", "first on line 1"),
        ]
        for (text, line, key, words) in cases {
            let error = refusal(text)
            #expect(error?.fileName == "t.cfg", "\(text)")
            #expect(error?.line == line, "\(text): \(String(describing: error))")
            #expect(error?.key == key, "\(text): \(String(describing: error))")
            #expect(error?.message.contains(words) == true, "\(text): \(String(describing: error))")
        }
    }

    @Test func invalidUTF8IsRefused() {
        #expect(throws: DomainConfigError.self) {
            try XLConfigFile(parsing: Array("a = '".utf8) + [0xff, 0xfe] + Array("'\n".utf8), fileName: "t.cfg")
        }
    }

    @Test func aFileOverTheLimitIsRefusedUnread() {
        let big = [UInt8](repeating: UInt8(ascii: "#"), count: XLConfigFile.maximumSize + 1)
        #expect(throws: DomainConfigError.self) { try XLConfigFile(parsing: big, fileName: "t.cfg") }
    }
}

/// Two refusals are the same only at the same place.
@Suite struct DomainConfigErrorTests {
    @Test func equalityIncludesTheLocation() {
        let a = DomainConfigError(.syntax, "m", fileName: "f", line: 1, key: "k")
        var b = a
        #expect(a == b)
        b.line = 2
        #expect(a != b)
        #expect(a.description == "f:1: k: m")
        #expect(DomainConfigError(.syntax, "m").description == "m")
    }
}
