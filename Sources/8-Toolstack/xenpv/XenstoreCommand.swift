import ArgumentParser
import XenStore

/// `xenpv xenstore read|write|ls|rm|watch`: a store client, like Xen's tools.
struct XenstoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenstore",
        abstract: "Read and change the store.",
        subcommands: [Read.self, Write.self, List.self, Remove.self, Watch.self])

    struct Read: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the value of each path.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "Paths to read.") var paths: [String]

        func run() async throws {
            let client = try store.connect()
            for path in paths { print(try await client.read(path)) }
        }
    }

    struct Write: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write PATH VALUE pairs.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "PATH VALUE [PATH VALUE …]") var pairs: [String]

        func validate() throws {
            guard !pairs.isEmpty, pairs.count % 2 == 0 else { throw ValidationError("give PATH VALUE pairs") }
        }

        func run() async throws {
            let client = try store.connect()
            for i in stride(from: 0, to: pairs.count, by: 2) { try await client.write(pairs[i], pairs[i + 1]) }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "Print a subtree with its values.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The subtree's root.") var path = "/"

        func run() async throws {
            let client = try store.connect()
            try await printTree(client, path, depth: 0)
        }

        private func printTree(_ client: XenStoreClient, _ path: String, depth: Int) async throws {
            for child in try await client.directory(path) {
                let full = path == "/" ? "/" + child : path + "/" + child
                let value = (try? await client.read(full)) ?? ""
                print(String(repeating: " ", count: depth * 2) + child + " = \"" + value + "\"")
                try await printTree(client, full, depth: depth + 1)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove paths and their subtrees.")
        @OptionGroup var store: StoreOptions
        @Argument(help: "Paths to remove.") var paths: [String]

        func run() async throws {
            let client = try store.connect()
            for path in paths { try await client.rm(path) }
        }
    }

    struct Watch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print each change under a path (Ctrl-C to stop).")
        @OptionGroup var store: StoreOptions
        @Argument(help: "The path to watch.") var path: String
        @Option(help: "Stop after this many events (0: never).") var count = 0

        func run() async throws {
            let client = try store.connect()
            var seen = 0
            for await event in try await client.watch(path) {
                print(event.path)
                seen += 1
                if count > 0, seen >= count { break }
            }
        }
    }
}
