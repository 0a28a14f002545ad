import Foundation
import Testing
import XenABI
import XenNetProtocol
import XenStore
import XenToolstack

/// The keys libxl writes, as ``DomainLayout`` lists them for a domain, a disk and a vif.
struct DomainLayoutTests {
    @Test func theDisksFixtureParsesIntoTwoVbdsOneReadOnly() throws {
        let path = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/configs/disks.cfg").path
        let config = try DomainConfig(contentsOfFile: path)
        #expect(config.arguments.prefix(3) == ["guest", "disk", "write"])
        let layouts = config.disks.map { DomainLayout.disk($0, domain: DomainID(7)) }
        #expect(layouts.map(\.device.id) == [51712, 51728])
        #expect(layouts.map { $0.backendKeys["mode"] } == ["w", "r"])
        #expect(layouts.map { $0.backendKeys["params"] } == ["/tmp/xenpv-a.img", "/tmp/xenpv-b.img"])
        #expect(layouts[1].backendKeys["dev"] == "xvdb" && layouts[1].frontendKeys["virtual-device"] == "51728")
        #expect(layouts[0].device.backendPath == "/local/domain/0/backend/vbd/7/51712")
    }

    @Test func sharedWritableIsModeWAndNoDiscardIsWritten() throws {
        let shared = DomainLayout.disk(try DiskSpec(parsing: "vdev=xvdc, access=w!, target=/img"), domain: DomainID(3))
        #expect(shared.backendKeys["mode"] == "w")
        let noDiscard = DomainLayout.disk(try DiskSpec(parsing: "/img,raw,xvda,w,no-discard"), domain: DomainID(3))
        #expect(noDiscard.backendKeys["discard-enable"] == "0")
        #expect(noDiscard.backendKeys["type"] == "phy" && noDiscard.backendKeys["device-type"] == "disk")
    }

    @Test func anEngineIsWrittenOnlyWhereTheSpecNamesOne() throws {
        let chosen = DomainLayout.disk(try DiskSpec(parsing: "/img,raw,xvda,w,engine=libaio"), domain: DomainID(3))
        #expect(chosen.backendKeys["engine"] == "libaio")
        let left = DomainLayout.disk(try DiskSpec(parsing: "/img,raw,xvda,w"), domain: DomainID(3))
        #expect(left.backendKeys["engine"] == nil)
        #expect(left.backendKeys["cache"] == nil)
        let cached = DomainLayout.disk(try DiskSpec(parsing: "/img,raw,xvda,w,cache=writeback"), domain: DomainID(3))
        #expect(cached.backendKeys["cache"] == "writeback")
    }

    @Test func aVifCarriesItsMacScriptAndAddresses() throws {
        let spec = try VifSpec(parsing: "mac=00:16:3e:aa:bb:cc, ip=192.0.2.5, script=vif-nat, rate=10Mb/s")
        let layout = DomainLayout.vif(spec, index: 1, domain: DomainID(4), mac: try #require(spec.mac))
        #expect(layout.device.backendPath == "/local/domain/0/backend/vif/4/1")
        #expect(layout.backendKeys["mac"] == "00:16:3e:aa:bb:cc" && layout.frontendKeys["mac"] == "00:16:3e:aa:bb:cc")
        #expect(layout.backendKeys["script"] == "vif-nat" && layout.backendKeys["ip"] == "192.0.2.5")
        #expect(layout.backendKeys["handle"] == "1" && layout.backendKeys["type"] == "vif")
        #expect(layout.backendKeys["rate"] != nil)
        let random = DomainLayout.randomMAC()
        #expect(random.array.prefix(3) == [0x00, 0x16, 0x3e] && random.array[3] < 0x80)
    }

    @Test func theDomainNodesAreLibxls() {
        let nodes = DomainLayout.domain(DomainID(5), name: "web", uuid: "u-1", memoryMiB: 64, startTime: 1700000000.5)
        let byPath = Dictionary(nodes.map { ($0.path, $0) }, uniquingKeysWith: { a, _ in a })
        #expect(byPath["/local/domain/5/name"]?.value == "web")
        #expect(byPath["/local/domain/5/vm"]?.value == "/vm/u-1")
        #expect(byPath["/local/domain/5/memory/target"]?.value == "65536")
        #expect(byPath["/vm/u-1/start_time"]?.value == "1700000000.50")
        #expect(byPath["/local/domain/5/control/shutdown"]?.permissions?.owner == DomainID(5))
        #expect(byPath["/local/domain/5/control"]?.permissions?.owner == .dom0)
    }
}
