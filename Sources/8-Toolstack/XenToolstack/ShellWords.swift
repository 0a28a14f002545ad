/// Splits a command line into words the way a POSIX shell splits simple words,
/// without any expansion.
///
/// The rule:
/// - blanks (space, tab, newline) separate words; runs of blanks count once;
/// - `'…'` keeps everything inside literally (no escapes);
/// - `"…"` keeps everything inside, except that `\"` and `\\` stand for `"` and `\`;
/// - outside quotes, `\` makes the next character literal (`a\ b` is one word);
/// - quoted and unquoted parts next to each other form one word (`a"b c"` is `ab c`),
///   and `''` or `""` alone is an empty word;
/// - nothing is expanded: `$HOME`, `*`, `~`, `;`, `|` are ordinary characters.
///
/// An unterminated quote or a `\` at the very end is refused.
public enum ShellWords {
    /// The words of `text`; throws an ``DomainConfigError/Code/syntax`` error without a location.
    public static func split(_ text: String) throws(DomainConfigError) -> [String] {
        var words: [String] = []
        var word = ""
        var inWord = false
        var iterator = text.unicodeScalars.makeIterator()
        while let c = iterator.next() {
            switch c {
            case " ", "\t", "\n":
                if inWord { words.append(word) }
                word = ""
                inWord = false
            case "'":
                inWord = true
                while true {
                    guard let d = iterator.next() else {
                        throw DomainConfigError(.syntax, "a ' has no closing '; close the quote")
                    }
                    if d == "'" { break }
                    word.unicodeScalars.append(d)
                }
            case "\"":
                inWord = true
                while true {
                    guard let d = iterator.next() else {
                        throw DomainConfigError(.syntax, "a \" has no closing \"; close the quote")
                    }
                    if d == "\"" { break }
                    if d == "\\" {
                        guard let e = iterator.next() else {
                            throw DomainConfigError(.syntax, "a \" has no closing \"; close the quote")
                        }
                        if e != "\"" && e != "\\" { word.unicodeScalars.append(d) }
                        word.unicodeScalars.append(e)
                        continue
                    }
                    word.unicodeScalars.append(d)
                }
            case "\\":
                guard let e = iterator.next() else {
                    throw DomainConfigError(.syntax, "a \\ ends the text; escape something or remove it")
                }
                inWord = true
                word.unicodeScalars.append(e)
            default:
                inWord = true
                word.unicodeScalars.append(c)
            }
        }
        if inWord { words.append(word) }
        return words
    }
}
