import Testing
import XenNetProtocol
import XenToolstack

/// xl-network-configuration(5)'s keys, and xl's rate format.
@Suite struct VifSpecTests {
    @Test func emptySpecTakesEveryDefault() throws {
        #expect(try VifSpec(parsing: "") == VifSpec())
        #expect(try VifSpec(parsing: "").script == .bridge)
    }

    @Test func everyKey() throws {
        let vif = try VifSpec(
            parsing: "mac=00:16:3e:0a:bc:DE, bridge=xenbr0, ip=192.0.2.1 10.0.0.7, script=vif-route, rate=10Mb/s, vifname=guest0, type=vif, model=e1000")
        #expect(vif.mac == MACAddress(0x00, 0x16, 0x3e, 0x0a, 0xbc, 0xde))
        #expect(vif.bridge == "xenbr0")
        #expect(vif.ip.map(\.description) == ["192.0.2.1", "10.0.0.7"])
        #expect(vif.script == .route)
        #expect(vif.rate == VifRate(bytesPerInterval: 62_500, intervalMicroseconds: 50_000))
        #expect(vif.vifname == "guest0")
    }

    @Test(arguments: [
        ("script=vif-bridge", VifScript.bridge), ("script=vif-route", .route), ("script=vif-nat", .nat),
        ("script=/etc/xen/scripts/vif-nat", .nat), ("bridge=br0", .bridge),
    ])
    func scripts(spec: String, script: VifScript) throws {
        #expect(try VifSpec(parsing: spec).script == script)
    }

    @Test func rates() throws {
        let cases: [(String, UInt64, UInt32)] = [
            ("10Mb/s", 62_500, 50_000),
            ("5MB/s@20ms", 100_000, 20_000),
            ("100KB/s@1s", 100_000, 1_000_000),
            ("1Gb/s@100us", 12_500, 100),
            ("8b/s@1s", 1, 1_000_000),
            ("5MB/s@20m", 100_000, 20_000),
            ("1000B/s@2", 2_000, 2_000_000),
            ("1000KB/s@250u", 250, 250),
            ("12b/s@2s", 2, 2_000_000),
            ("4294967295GB/s@1us", 4_294_967_295_000, 1),
        ]
        for (text, bytes, interval) in cases {
            #expect(try VifRate(parsing: text) == VifRate(bytesPerInterval: bytes, intervalMicroseconds: interval), "\(text)")
        }
    }

    @Test(arguments: [
        "10Mb", "10Mb/s@", "0MB/s", "10Xb/s", "10Mb/s@5h", "MB/s", "1b/s@1ms", "1Mb/s@1ms@2ms", "-1MB/s",
        "1000/s", "10mb/s", "1kB/s", "4294967296B/s", "010MB/s", "1MB/s@05ms", "1MB/s@4295s", "1MB/s@",
        "4294967295GB/s@4294967295us", "1MB/s@9999999999", "1MB/sx", "",
    ])
    func badRates(text: String) {
        #expect(throws: DomainConfigError.self) { try VifRate(parsing: text) }
    }

    @Test func refusals() {
        let cases: [(String, DomainConfigError.Code, String)] = [
            ("mac=00:16:3e:0a:bc", .invalidValue, "not six hex pairs"),
            ("mac=+0:16:3e:0a:bc:de", .invalidValue, "not six hex pairs"),
            ("mac=01:16:3e:0a:bc:de", .invalidValue, "multicast"),
            ("ip=192.0.2.256", .invalidValue, "not an IPv4 address"),
            ("ip=192.0.2.01", .invalidValue, "not an IPv4 address"),
            ("ip=", .invalidValue, "ip is empty"),
            ("script=vif-openvswitch", .invalidValue, "not vif-bridge, vif-route or vif-nat"),
            ("type=ioemu", .unsupported, "only vif"),
            ("bridge=a-name-far-too-long", .invalidValue, "not an interface name"),
            ("vifname=a/b", .invalidValue, "not an interface name"),
            ("backend=dom0", .unknownKey, "not a vif key"),
            ("bridge=br0,bridge=br1", .duplicate, "given twice"),
            ("xenbr0", .invalidValue, "not key=value"),
        ]
        for (spec, code, words) in cases {
            do {
                _ = try VifSpec(parsing: spec)
                Issue.record("\(spec) parsed")
            } catch {
                #expect(error.code == code, "\(spec): \(error)")
                #expect(error.message.contains(words), "\(spec): \(error)")
            }
        }
    }
}
