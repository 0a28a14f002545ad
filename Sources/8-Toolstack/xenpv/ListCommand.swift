import ArgumentParser
import Foundation
import XenABI
import XenBus
import XenStore
import XenToolstack

/// `xenpv list`: the domains in xl's columns, or with `--devices` their split
/// devices with both ends' states; read from the store (works against any
/// xenstored: ours, the daemon's, Xen's).
struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List domains as xl does (Name ID Mem VCPUs State Time(s)), or their devices.",
        discussion: """
            Mem is memory/target in MiB; State is r----- for dom0 and -b---- for a guest (the simulated
            hypervisor schedules no vcpus), with s in the third column while a shutdown request waits;
            Time(s) is the time since the domain's start_time.
            """)

    @OptionGroup var store: StoreOptions

    @Option(help: "A hypervisor daemon's socket: read its store (SOCKET.xenstore) instead of --store.")
    var connect: String?

    @Flag(help: "List each domain's split devices with both ends' states.")
    var devices = false

    func run() async throws {
        var store = self.store
        if let connect { store.path = connect + ".xenstore" }
        let client = try store.connect()
        defer { client.close() }
        guard devices else {
            print("Name                                        ID   Mem VCPUs\tState\tTime(s)")
            for d in await Toolstack.domains(in: client) {
                let state = d.id.rawValue == 0 ? "r-----" : (d.shutdownRequested ? "-bs---" : "-b----")
                let name = d.name.isEmpty ? "(dom\(d.id.rawValue))" : d.name
                print("\(pad(name, 40)) \(left(d.id.rawValue, 5)) \(left(d.memoryMiB, 5)) \(left(1, 5))     \(state) \(String(format: "%8.1f", d.seconds))")
            }
            return
        }
        let domains = ((try? await client.directory("/local/domain")) ?? []).compactMap(UInt16.init).sorted()
        print("DOMAIN  DEVICE       FRONTEND        BACKEND         BACKEND-DOMAIN")
        for domain in domains {
            let home = "/local/domain/\(domain)"
            let name = (try? await client.read(home + "/name")) ?? ""
            print("dom\(domain)\(name.isEmpty ? "" : " (\(name))")")
            for type in (try? await client.directory(home + "/device")) ?? [] {
                for id in (try? await client.directory(home + "/device/\(type)")) ?? [] {
                    let fe = home + "/device/\(type)/\(id)"
                    let backend = (try? await client.read(fe + "/backend")) ?? "?"
                    let backendDomain = (try? await client.read(fe + "/backend-id")) ?? "?"
                    let feState = await state(client, fe)
                    let beState = await state(client, backend)
                    print("        \(pad("\(type)/\(id)", 12)) \(pad(feState, 15)) \(pad(beState, 15)) dom\(backendDomain)")
                }
            }
        }
    }

    private func state(_ client: XenStoreClient, _ dir: String) async -> String {
        guard let text = try? await client.read(dir + "/state") else { return "-" }
        return (try? XenstoreValue.state(text, key: dir + "/state"))?.description ?? "bad(\(text.prefix(8)))"
    }

    private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

    private func left(_ value: some BinaryInteger, _ n: Int) -> String {
        let s = "\(value)"
        return s.count >= n ? s : String(repeating: " ", count: n - s.count) + s
    }
}
