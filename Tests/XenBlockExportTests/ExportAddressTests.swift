import Testing
import XenBlockExport

@Suite struct ExportAddressTests {
    @Test func addressesParse() throws {
        #expect(try BlockExportAddress(parsing: "unix:/tmp/x.sock") == .unix("/tmp/x.sock"))
        #expect(try BlockExportAddress(parsing: "tcp:127.0.0.1:10809") == .tcp(host: "127.0.0.1", port: 10809))
        #expect(try BlockExportAddress(parsing: "tcp:[::1]:0") == .tcp(host: "::1", port: 0))
        #expect(BlockExportAddress.unix("/s").uri == "nbd+unix:///?socket=/s")
        #expect(BlockExportAddress.tcp(host: "::1", port: 5).description == "tcp:[::1]:5")
        for bad in ["", "unix:", "tcp:host", "tcp::80", "tcp:h:70000", "tcp:h:-1", "file:/x"] {
            #expect(throws: BlockExportError.self) { try BlockExportAddress(parsing: bad) }
        }
    }
}
