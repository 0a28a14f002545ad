#!/usr/bin/env python3
"""List public declarations that have no `///` doc comment, per Swift module.

Usage:
    Scripts/undocumented-public.py [--list] [--check] [MODULE ...]

With no MODULE, every Swift target under Sources/<layer>/ and Benchmarks/Engines/
is scanned. Prints one line
per module, "<count> <module>", then the total. --list also prints each
undocumented declaration as path:line: text. --check exits with status 1 when
any scanned module has an undocumented public declaration (for CI).

What counts as a public declaration (a line-based heuristic, not a parser):
  * a declaration line whose modifiers include `public` or `open`;
  * a case of a public enum;
  * a requirement of a public protocol;
  * a member of a `public extension` that is not marked private/fileprivate/
    internal/package.
Extensions, imports and deinits are not counted (DocC does not show a doc
comment on them). A declaration is documented when the nearest line above it
that is not an attribute (`@...`) is a `///` line or closes a `/** */` block.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each module is a folder in a layer folder (Sources/1-Base/XenABI, …) or an engine
# folder (Benchmarks/Engines/XenRingBenchmark).
LAYERS = sorted(
    [os.path.join(ROOT, "Sources", d) for d in os.listdir(os.path.join(ROOT, "Sources"))]
    + [os.path.join(ROOT, "Benchmarks", "Engines")]
)
MODULES = {
    name: os.path.join(layer, name)
    for layer in LAYERS if os.path.isdir(layer)
    for name in os.listdir(layer) if os.path.isdir(os.path.join(layer, name))
}

MODIFIER = (
    r"(?:public|open|internal|private|fileprivate|package)(?:\((?:set)\))?"
    r"|final|static|class(?=\s+(?:func|var|let|subscript|init))|nonisolated(?:\(unsafe\))?"
    r"|mutating|nonmutating|override|convenience|required|lazy|weak|unowned"
    r"|indirect|dynamic|consuming|borrowing|optional"
)
ATTRIBUTE = r"@[A-Za-z_][A-Za-z0-9_]*(?:\([^()]*(?:\([^()]*\)[^()]*)*\))?"
DECL = re.compile(
    r"^\s*((?:(?:" + ATTRIBUTE + r"|" + MODIFIER + r")\s+)*)"
    r"(func|var|let|init[?!]?|deinit|subscript|struct|class|enum|protocol|extension"
    r"|typealias|associatedtype|case|actor|macro|operator|precedencegroup)\b"
)
ATTRIBUTE_LINE = re.compile(r"^(?:" + ATTRIBUTE + r"\s*)+$")
TYPE_KEYWORDS = {"struct", "class", "enum", "protocol", "extension", "actor"}


def strip_code(line, state):
    """Remove comments and string contents from one line; `state` carries
    whether we are inside a block comment or a multi-line string."""
    out = []
    i = 0
    n = len(line)
    while i < n:
        if state["block"]:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out)
            state["block"] = False
            i = end + 2
            continue
        if state["multi"]:
            end = line.find('"""', i)
            if end < 0:
                return "".join(out)
            state["multi"] = False
            out.append('""')
            i = end + 3
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            state["block"] = True
            i += 2
            continue
        if line.startswith('"""', i):
            state["multi"] = True
            i += 3
            continue
        if c == '"':
            j = i + 1
            depth = 0
            while j < n:
                if line[j] == "\\" and j + 1 < n and line[j + 1] == "(":
                    depth += 1
                    j += 2
                    continue
                if depth and line[j] == ")":
                    depth -= 1
                elif line[j] == "\\":
                    j += 1
                elif line[j] == '"' and depth == 0:
                    break
                j += 1
            out.append('""')
            i = j + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def documented(lines, index):
    j = index - 1
    while j >= 0:
        text = lines[j].strip()
        if ATTRIBUTE_LINE.match(text):
            j -= 1
            continue
        return text.startswith("///") or text.endswith("*/")
    return False


def scan_file(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    state = {"block": False, "multi": False}
    # Each scope: (kind, is_public) of the declaration that opened it.
    stack = []
    pending = None
    missing = []
    for index, raw in enumerate(lines):
        code = strip_code(raw, state)
        m = DECL.match(code)
        if m:
            modifiers = m.group(1)
            keyword = m.group(2).rstrip("?!")
            words = set(re.findall(r"\b(public|open|private|fileprivate|internal|package)\b(?!\()", modifiers))
            parent = stack[-1] if stack else ("file", False)
            explicit_public = bool(words & {"public", "open"})
            restricted = bool(words & {"private", "fileprivate", "internal", "package"})
            if explicit_public:
                is_public = True
            elif keyword == "case":
                is_public = parent == ("enum", True)
            elif parent in (("protocol", True), ("extension", True)):
                is_public = not restricted
            else:
                is_public = False
            if is_public and keyword not in ("extension", "deinit") and not documented(lines, index):
                missing.append((index + 1, raw.strip()))
            if keyword in TYPE_KEYWORDS:
                pending = (keyword, is_public)
            else:
                pending = ("member", is_public)
        for c in code:
            if c == "{":
                stack.append(pending if pending else ("block", False))
                pending = None
            elif c == "}":
                if stack:
                    stack.pop()
    return missing


def swift_files(module):
    base = MODULES.get(module, "")
    for dirpath, _, names in os.walk(base):
        for name in sorted(names):
            if name.endswith(".swift"):
                yield os.path.join(dirpath, name)


def main(argv):
    show = "--list" in argv
    check = "--check" in argv
    modules = [a for a in argv if not a.startswith("--")]
    if not modules:
        modules = sorted(
            d for d in MODULES
            if any(True for _ in swift_files(d))
        )
    total = 0
    for module in modules:
        if module not in MODULES:
            print(f"no such module: {module}", file=sys.stderr)
            return 2
        found = []
        for path in sorted(swift_files(module)):
            for line, text in scan_file(path):
                found.append((os.path.relpath(path, ROOT), line, text))
        total += len(found)
        print(f"{len(found):5d} {module}")
        if show:
            for path, line, text in found:
                print(f"        {path}:{line}: {text}")
    print(f"{total:5d} total")
    return 1 if check and total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
