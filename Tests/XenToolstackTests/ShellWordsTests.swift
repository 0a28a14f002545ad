import Testing
import XenToolstack

/// `extra`'s rule: simple shell words, no expansion.
@Suite struct ShellWordsTests {
    @Test func splits() throws {
        let cases: [(String, [String])] = [
            ("", []),
            ("   ", []),
            ("a b\tc\nd", ["a", "b", "c", "d"]),
            ("  a   b  ", ["a", "b"]),
            ("'a b' \"c d\"", ["a b", "c d"]),
            ("a\\ b", ["a b"]),
            ("x'y z'\"w\"", ["xy zw"]),
            ("'' \"\"", ["", ""]),
            (#""say \"hi\" \\ \n""#, [#"say "hi" \ \n"#]),
            ("'no \\ escape'", ["no \\ escape"]),
            ("$HOME * ~ ; |", ["$HOME", "*", "~", ";", "|"]),
        ]
        for (text, words) in cases {
            #expect(try ShellWords.split(text) == words, "\(text)")
        }
    }

    @Test(arguments: ["'open", "\"open", "end\\", "\"a\\"])
    func refusals(text: String) {
        #expect(throws: DomainConfigError.self) { try ShellWords.split(text) }
    }
}
