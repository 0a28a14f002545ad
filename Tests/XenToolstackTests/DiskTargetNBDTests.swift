import Testing
import XenToolstack

/// An NBD URI is a disk target too: checked for form, identified by its canonical URI.
@Suite struct DiskTargetNBDTests {
    @Test func nbdURIsAreTargetsAndBadOnesAreRefused() throws {
        let t = try DiskTarget(checking: "nbd+unix:///vol?socket=/run/nbd.sock")
        #expect(t.nbd != nil && t.identity == .nbd("nbd+unix:///vol?socket=/run/nbd.sock"))
        #expect(try DiskTarget(checking: "nbd://h:10809/x").identity == DiskTarget(checking: "nbd://h/x").identity)
        #expect(throws: ToolstackError.self) { try DiskTarget(checking: "nbds://h/x") }
        #expect(throws: ToolstackError.self) { try DiskTarget(checking: "nbd+unix:///x") }
        #expect(throws: ToolstackError.self) { try DiskTarget(checking: "relative/path") }
    }
}
