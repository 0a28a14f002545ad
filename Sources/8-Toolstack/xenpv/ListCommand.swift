import ArgumentParser
import XenABI
import XenBus
import XenStore

/// `xenpv list`: domains and their split devices with both ends' states, read
/// from the store (works against any xenstored: ours, the daemon's, Xen's).
struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List domains and devices with their states.")

    @OptionGroup var store: StoreOptions

    func run() async throws {
        let client = try store.connect()
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
}
