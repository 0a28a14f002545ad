import Testing
import XenToolstack

/// xl-disk-configuration(5)'s forms and the VBD interface's device numbers.
@Suite struct DiskSpecTests {
    @Test(arguments: [
        "/path/img,raw,xvda,rw",
        "/path/img,,xvda",
        "format=raw, vdev=xvda, access=rw, target=/path/img",
        "file:/path/img,xvda,w",
        "phy:/path/img,xvda,w",
        "raw:/path/img,xvda:disk,rw",
        "/path/img, raw, vdev=xvda",
        "vdev=xvda, /path/img",
        "  /path/img ,  , xvda , ",
    ])
    func equivalentForms(spec: String) throws {
        let disk = try DiskSpec(parsing: spec)
        #expect(disk.target == "/path/img")
        #expect(disk.format == .raw)
        #expect(disk.vdev.name == "xvda" && disk.vdev.number == 51712)
        #expect(disk.access == .readWrite)
    }

    @Test func targetConsumesTheRestOfTheSpec() throws {
        let disk = try DiskSpec(parsing: "vdev=xvdb, access=ro, target=/images/a,b c, d")
        #expect(disk.target == "/images/a,b c, d")
        #expect(disk.access == .readOnly)
        #expect(disk.vdev.number == 51728)
    }

    @Test func accessSpellings() throws {
        let expected: [(String, DiskAccess)] = [
            ("r", .readOnly), ("ro", .readOnly), ("w", .readWrite), ("rw", .readWrite), ("w!", .readWriteShared),
        ]
        for (text, access) in expected {
            #expect(try DiskSpec(parsing: "/i,raw,xvda,\(text)").access == access)
        }
    }

    @Test func relativeTargetsAreUnderDev() throws {
        #expect(try DiskSpec(parsing: "vg/guest,,xvda").target == "/dev/vg/guest")
    }

    @Test func discardFlags() throws {
        #expect(try DiskSpec(parsing: "/i,,xvda,discard").discard == true)
        #expect(try DiskSpec(parsing: "/i,,xvda,no-discard").discard == false)
        #expect(try DiskSpec(parsing: "/i,,xvda").discard == nil)
    }

    @Test func engineKey() throws {
        #expect(try DiskSpec(parsing: "engine=io_uring, vdev=xvda, target=/i").engine == .ioUring)
        #expect(try DiskSpec(parsing: "/i,,xvda, engine=libaio").engine == .libaio)
        #expect(try DiskSpec(parsing: "/i,,xvda").engine == nil)
        for bad in ["/i,,xvda,engine=", "/i,,xvda,engine=IO_URING", "/i,,xvda,engine=aio", "/i,,xvda,engine=libaio,engine=libaio"] {
            #expect(throws: DomainConfigError.self, "\(bad)") { try DiskSpec(parsing: bad) }
        }
    }

    @Test func cacheKey() throws {
        #expect(try DiskSpec(parsing: "cache=writeback, vdev=xvda, target=/i").cache == .writeback)
        #expect(try DiskSpec(parsing: "/i,,xvda, cache=none, engine=libaio").cache == .direct)
        #expect(try DiskSpec(parsing: "/i,,xvda").cache == nil)
        for bad in ["/i,,xvda,cache=", "/i,,xvda,cache=WRITEBACK", "/i,,xvda,cache=unsafe", "/i,,xvda,cache=none,cache=none"] {
            #expect(throws: DomainConfigError.self, "\(bad)") { try DiskSpec(parsing: bad) }
        }
    }

    /// An NBD export's URI is a target as given (no `/dev/` in front, not a prefix), in
    /// either form; `cache=` on one is refused (its server caches it).
    @Test func nbdTargets() throws {
        let unix = "nbd+unix:///vol?socket=/run/nbd.sock"
        #expect(try DiskSpec(parsing: "vdev=xvda, target=\(unix)").target == unix)
        #expect(try DiskSpec(parsing: "\(unix),raw,xvda,r").target == unix)
        #expect(try DiskSpec(parsing: "nbd://storage:10809/vol,,xvdb").target == "nbd://storage:10809/vol")
        #expect(try DiskSpec(parsing: "vdev=xvda, engine=libaio, target=nbd://h/x").target == "nbd://h/x")
        #expect(throws: DomainConfigError.self) { try DiskSpec(parsing: "vdev=xvda, cache=writeback, target=nbd://h/x") }
        #expect(try DiskSpec(parsing: "vdev=xvda, cache=writeback, target=/i").cache == .writeback)
    }

    @Test func xvdNumbers() throws {
        for (index, letter) in "abcdefghijklmnop".enumerated() {
            #expect(try VirtualDiskDevice(name: "xvd\(letter)").number == UInt32(202 << 8 | index << 4))
        }
        #expect(try VirtualDiskDevice(name: "xvda1").number == 51713)
        #expect(try VirtualDiskDevice(name: "xvdb15").number == 51743)
        // The extended scheme: the seventeenth disk, a sixteenth partition, two letters.
        #expect(try VirtualDiskDevice(name: "xvdq").number == (1 << 28 | 16 << 8))
        #expect(try VirtualDiskDevice(name: "xvda16").number == (1 << 28 | 16))
        #expect(try VirtualDiskDevice(name: "xvdaa").number == (1 << 28 | 26 << 8))
        #expect(try VirtualDiskDevice(name: "d0p1").number == 51713)
        #expect(try VirtualDiskDevice(name: "d0p0").number == 51712)
        #expect(try VirtualDiskDevice(name: "d16p0").number == (1 << 28 | 16 << 8))
        #expect(try VirtualDiskDevice(name: "xvdaaaaa").number == (1 << 28 | 475_254 << 8))
        #expect(try VirtualDiskDevice(name: "xvdbgqcv").number == (1 << 28 | ((1 << 20) - 1) << 8))
    }

    @Test func hdAndSdNumbers() throws {
        #expect(try VirtualDiskDevice(name: "hda").number == 3 << 8)
        #expect(try VirtualDiskDevice(name: "hdb").number == 3 << 8 | 64)
        #expect(try VirtualDiskDevice(name: "hdc").number == 22 << 8)
        #expect(try VirtualDiskDevice(name: "hdd2").number == 22 << 8 | 64 | 2)
        #expect(try VirtualDiskDevice(name: "sda").number == 8 << 8)
        #expect(try VirtualDiskDevice(name: "sdp15").number == 8 << 8 | 15 << 4 | 15)
    }

    @Test(arguments: ["", "xvd", "xvdA", "xvda0", "xvda01", "xvdbgqcw", "xvdzzzzzzzzzzzz", "xvda256", "d0", "d01p1", "d0p01", "51712", "hde", "hda64", "sdq", "sda16", "vda", "d", "dx", "d1p", "d1p256", "d1048576p0", "xvda1x"])
    func badDeviceNames(name: String) {
        #expect(throws: DomainConfigError.self) { try VirtualDiskDevice(name: name) }
    }

    @Test func refusals() {
        let cases: [(String, DomainConfigError.Code, String)] = [
            ("/i,qcow2,xvda", .unsupported, "format \"qcow2\" is not supported"),
            ("format=vhd, vdev=xvda, target=/i", .unsupported, "only raw"),
            ("/i,raw,xvda,x", .invalidValue, "access \"x\" is not one of r, ro, w, rw, w!"),
            ("/i,raw", .missing, "no vdev"),
            ("vdev=xvda", .missing, "no target"),
            ("/i,raw,xvda,rw,extra", .invalidValue, "too many positional"),
            ("/i,,xvda,cdrom", .unsupported, "cdrom"),
            ("/i,,hdc:cdrom", .unsupported, "cdrom"),
            ("devtype=cdrom, vdev=hdc, target=/i", .unsupported, "cdrom"),
            ("tap:aio:/i,xvda,w", .unsupported, "prefix \"tap:\""),
            ("qcow2:/i,xvda,w", .unsupported, "prefix"),
            ("backend=dom0, vdev=xvda, target=/i", .unknownKey, "not a disk parameter"),
            ("/i,,xvda,vdev=xvdb", .duplicate, "vdev is given twice"),
            ("", .missing, "no target"),
        ]
        for (spec, code, words) in cases {
            do {
                _ = try DiskSpec(parsing: spec)
                Issue.record("\(spec) parsed")
            } catch {
                #expect(error.code == code, "\(spec): \(error)")
                #expect(error.message.contains(words), "\(spec): \(error)")
            }
        }
    }
}
