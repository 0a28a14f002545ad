import NBDProtocol
import Testing

/// The two URI forms libnbd and QEMU write, and everything else refused with a reason.
@Suite struct NBDURITests {
    @Test func tcpURIsTakeAHostAnOptionalPortAndAnExport() throws {
        #expect(try NBDURI(parsing: "nbd://example.com/disk") == NBDURI(endpoint: .tcp(host: "example.com", port: 10809), exportName: "disk"))
        #expect(try NBDURI(parsing: "nbd://127.0.0.1:10900/") == NBDURI(endpoint: .tcp(host: "127.0.0.1", port: 10900), exportName: ""))
        #expect(try NBDURI(parsing: "nbd://host") == NBDURI(endpoint: .tcp(host: "host", port: 10809), exportName: ""))
        #expect(try NBDURI(parsing: "nbd://[::1]:2000/a%20b") == NBDURI(endpoint: .tcp(host: "::1", port: 2000), exportName: "a b"))
        #expect(try NBDURI(parsing: "nbd://[::1]:2000/a%20b").description == "nbd://[::1]:2000/a%20b")
    }

    @Test func unixURIsTakeAnAbsoluteSocketPath() throws {
        let u = try NBDURI(parsing: "nbd+unix:///vol?socket=/run/nbd.sock")
        #expect(u == NBDURI(endpoint: .unix(path: "/run/nbd.sock"), exportName: "vol"))
        #expect(u.description == "nbd+unix:///vol?socket=/run/nbd.sock")
        #expect(try NBDURI(parsing: "nbd+unix://?socket=/tmp/s") == NBDURI(endpoint: .unix(path: "/tmp/s"), exportName: ""))
        #expect(try NBDURI(parsing: u.description) == u)
    }

    @Test(arguments: [
        "/srv/disk.img", "file:///x", "nbds://host/x", "nbds+unix:///x?socket=/s", "nbd+vsock://1/x", "nbd+ssh://h/x",
        "nbd:///x", "nbd://host:0/x", "nbd://host:65536/x", "nbd://host:x/y", "nbd://host/x?tls=on", "nbd://u@host/x",
        "nbd+unix:///x", "nbd+unix:///x?socket=relative", "nbd+unix://host/x?socket=/s", "nbd+unix:///x?socket=/s&tls=1",
        "nbd://host/%zz", "nbd://host/%00", "nbd://[::1/x", "nbd+unix:///x?socket=/" + String(repeating: "a", count: 120),
    ])
    func everythingElseIsRefused(_ text: String) {
        #expect(throws: NBDProtocolError.self) { try NBDURI(parsing: text) }
    }

    @Test func onlyNBDSchemesLookLikeURIs() {
        #expect(NBDURI.looksLikeURI("nbd://h/x") && NBDURI.looksLikeURI("nbd+unix:///x?socket=/s"))
        #expect(!NBDURI.looksLikeURI("/srv/nbd.img"))
    }
}
