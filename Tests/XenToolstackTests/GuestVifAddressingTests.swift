import Testing
import XenABI
import XenToolstack

/// What a guest's stack is given on a vif, by the mode of its script: the address from
/// `ip` (or NAT's default), the prefix and the gateway the mode implies; dom0's values that
/// are no address refused with the key named, never a trap.
@Suite struct GuestVifAddressingTests {
    static func addressing(_ keys: [String: String], domain: UInt16 = 5, devid: UInt32 = 0) throws -> GuestVifAddressing {
        try GuestVifAddressing(backendKeys: keys, domain: DomainID(domain), devid: devid)
    }

    @Test func routeIsTheIPAsA32WithADefaultRouteOutOfTheVif() throws {
        let a = try Self.addressing(["script": "/etc/xen/scripts/vif-route", "ip": "10.71.0.5 10.71.0.6"])
        #expect(a.script == .route && a.cidr == "10.71.0.5/32" && a.defaultRoute == .onLink)
        // A prefix dom0 wrote does not widen a routed guest's address: the host routes a /32.
        #expect(try Self.addressing(["script": "vif-route", "ip": "10.71.0.5/24"]).cidr == "10.71.0.5/32")
    }

    @Test func natIsThe30WithTheOtherUsableAddressAsGateway() throws {
        let two = try Self.addressing(["script": "vif-nat", "ip": "10.72.0.2"])
        #expect(two.cidr == "10.72.0.2/30" && two.defaultRoute == .via(IPv4Address(value: 0x0a48_0001)))
        let one = try Self.addressing(["script": "vif-nat", "ip": "10.72.0.5"])
        #expect(one.cidr == "10.72.0.5/30" && one.defaultRoute == .via(IPv4Address(value: 0x0a48_0006)))
        // Without ip: 10.D1.D2.(4×devid+2), as the backend's vif-nat makes it, for domain 258 vif 3.
        let implied = try Self.addressing(["script": "vif-nat"], domain: 258, devid: 3)
        #expect(implied.cidr == "10.1.2.14/30" && implied.defaultRoute == .via(IPv4Address(value: 0x0a01_020d)))
    }

    @Test func bridgeTakesTheIPAndItsPrefixAndNoRoute() throws {
        #expect(try Self.addressing(["script": "vif-bridge", "ip": "192.168.5.7/16"]).cidr == "192.168.5.7/16")
        #expect(try Self.addressing(["ip": "192.168.5.7"]).cidr == "192.168.5.7/24")
        let bare = try Self.addressing([:])
        #expect(bare.script == .bridge && bare.address == nil && bare.defaultRoute == .none)
    }

    @Test(arguments: [
        ["script": "vif-route"], ["script": "vif-route", "ip": "300.1.1.1"], ["script": "vif-nat", "ip": "10.72.0.3"],
        ["script": "vif-nat", "ip": "10.72.0.4"], ["script": "vif-nat", "ip": "10.0.0.1/33"], ["script": "vif-nat", "ip": "01.2.3.4"],
        ["script": "/bin/sh"], ["script": ""], ["ip": "1.2.3.4/"], ["ip": "1.2.3.4/08"], ["ip": "a.b.c.d"],
        ["script": String(repeating: "/", count: 5000)],
    ])
    func refusesWhatIsNoAddressing(_ keys: [String: String]) {
        #expect(throws: DomainConfigError.self) { try Self.addressing(keys) }
    }

    @Test func natWithoutIPNeedsASmallDevid() {
        #expect(throws: DomainConfigError.self) { try Self.addressing(["script": "vif-nat"], devid: 64) }
    }

    @Test func addressesConvertBothWays() throws {
        let a = try #require(IPv4Address("192.0.2.255"))
        #expect(a.value == 0xC000_02FF && IPv4Address(value: a.value) == a && a.description == "192.0.2.255")
        #expect(IPv4Address(value: 0x0a48_0001).description == "10.72.0.1")
    }
}
