import Foundation
import TestSupport
import Testing
import XenNetProtocol
import XenToolstack

/// DomainConfig: what each key means, which keys are ignored or refused, and where
/// each refusal points.
@Suite struct DomainConfigTests {
    /// xl's /etc/xen/xlexample.pvlinux, adapted: a guest
    /// program for a kernel, its arguments in extra.
    static let pvlinux = """
        # =====================================================================
        # Example PV Linux guest configuration, adapted for XenPV
        # =====================================================================

        # Guest name
        name = "example.pvlinux"

        # 128-bit UUID for the domain (meaningless here: ignored)
        #uuid = "XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX"

        # The guest program to start, and its arguments
        kernel = "/usr/local/bin/guest-app"
        extra = "--hypervisor simulated '/run/xenpv/hyper visor.sock'"

        # Initial memory allocation (MB)
        memory = 128

        # Number of VCPUS
        vcpus = 2

        # Network devices
        vif = [ '' ]

        # Disk Devices
        disk = [ '/dev/vg/guest-volume,raw,xvda,rw' ]
        """

    func refusal(_ text: String) -> DomainConfigError? {
        do {
            _ = try DomainConfig(parsing: text, fileName: "guest.cfg")
            return nil
        } catch {
            return error
        }
    }

    @Test func xlExamplePVLinux() throws {
        let config = try DomainConfig(parsing: Self.pvlinux, fileName: "pvlinux.cfg")
        #expect(config.name == "example.pvlinux")
        #expect(config.kernel == "/usr/local/bin/guest-app")
        #expect(config.extra == "--hypervisor simulated '/run/xenpv/hyper visor.sock'")
        #expect(config.arguments == ["--hypervisor", "simulated", "/run/xenpv/hyper visor.sock"])
        #expect(config.memory == 128)
        #expect(config.vifs == [VifSpec()])
        #expect(config.disks == [DiskSpec(target: "/dev/vg/guest-volume", vdev: try VirtualDiskDevice(name: "xvda"))])
        #expect(config.disks.first?.vdev.number == 51712)
        #expect(config.onPoweroff == .destroy && config.onReboot == .restart)
        #expect(config.ignored == [IgnoredSetting(key: "vcpus", line: 19)])
    }

    @Test func theFixtureParses() throws {
        let path = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/configs/guest.cfg").path
        let config = try DomainConfig(contentsOfFile: path)
        #expect(config.name == "guest")
        #expect(config.memory == 64)
        #expect(config.kernel == "Examples/.build/debug/guest-app")
        #expect(config.arguments == ["--hypervisor", "simulated", "/tmp/xenpv-hypervisor.sock"])
        #expect(config.disks.count == 1 && config.disks[0].vdev.name == "xvda" && config.disks[0].access == .readWrite)
        #expect(config.disks[0].target == "/tmp/xenpv-guest-disk.img")
        #expect(config.vifs == [VifSpec(bridge: "xenpvbr0", script: .bridge)])
        #expect(config.ignored.map(\.key) == ["vcpus", "type"])
    }

    @Test func theNetworkFixturesParse() throws {
        let dir = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/configs")
        let routed = try DomainConfig(contentsOfFile: dir.appendingPathComponent("routed.cfg").path)
        #expect(routed.vifs.map(\.script) == [.route] && routed.vifs.first?.ip.map(\.description) == ["10.71.0.5"])
        #expect(routed.arguments.contains("--netns") && routed.arguments.contains("write-verify"))
        let natted = try DomainConfig(contentsOfFile: dir.appendingPathComponent("natted.cfg").path)
        #expect(natted.vifs.map(\.script) == [.nat] && natted.vifs.first?.ip.map(\.description) == ["10.72.0.2"])
    }

    @Test func missingFileIsUnreadable() {
        #expect(throws: DomainConfigError.self) { try DomainConfig(contentsOfFile: "/nonexistent/xenpv/guest.cfg") }
    }

    @Test func multiLineListsWithEverySpecForm() throws {
        let config = try DomainConfig(
            parsing: """
                name = 'many'; kernel = '/bin/guest'
                disk = [
                    '/images/root.img,raw,xvda,rw',   # positional
                    '/images/data.img,,xvdb',
                    # keyword, target last
                    'format=raw, vdev=xvdc, access=ro, target=/images/c,d.img',
                    'file:/images/old.img,xvdd,w',
                ]
                vif = [
                    'mac=00:16:3e:00:00:01, bridge=xenbr0',
                    'script=vif-route, ip=192.0.2.10',
                    "script=vif-nat, ip=10.0.0.2, rate=5MB/s@20ms",
                ]
                on_poweroff = 'preserve'
                on_reboot = 'rename-restart'
                """, fileName: "many.cfg")
        #expect(config.disks.map(\.target) == ["/images/root.img", "/images/data.img", "/images/c,d.img", "/images/old.img"])
        #expect(config.disks.map(\.vdev.number) == [51712, 51728, 51744, 51760])
        #expect(config.disks.map(\.access) == [.readWrite, .readWrite, .readOnly, .readWrite])
        #expect(config.vifs.map(\.script) == [.bridge, .route, .nat])
        #expect(config.vifs[0].mac == MACAddress(0, 0x16, 0x3e, 0, 0, 1))
        #expect(config.vifs[2].rate == VifRate(bytesPerInterval: 100_000, intervalMicroseconds: 20_000))
        #expect(config.onPoweroff == .preserve && config.onReboot == .renameRestart)
        #expect(config.memory == DomainConfig.defaultMemory)
        #expect(config.arguments.isEmpty && config.extra == nil)
    }

    /// Each refusal: (file, line, key, words of the message).
    @Test func errorsNameTheirLineAndKey() {
        let head = "name = 'g'\nkernel = '/bin/g'\n"
        let cases: [(String, Int?, String, String)] = [
            (head + "bogus = 1\n", 3, "bogus", "unknown key"),
            (head + "ramdisk = '/boot/initrd'\n", 3, "ramdisk", "not supported"),
            (head + "memory = 0\n", 3, "memory", "out of range"),
            (head + "memory = '12x'\n", 3, "memory", "expected a number"),
            (head + "memory = [ 1 ]\n", 3, "memory", "expected a number"),
            (head + "name2 = 1\n", 3, "name2", "unknown key"),
            ("name = 'a/b'\n", 1, "name", "not a domain name"),
            ("name = 'a b'\n", 1, "name", "not a domain name"),
            ("name = '42'\n", 1, "name", "not a domain name"),
            ("name = ''\n", 1, "name", "not a domain name"),
            ("kernel = '/bin/g'\n", nil, "name", "no name"),
            ("name = 'g'\n", nil, "kernel", "no kernel"),
            (head + "kernel2 = ''\n", 3, "kernel2", "unknown key"),
            (head + "disk = '/i,,xvda'\n", 3, "disk", "expected a list"),
            (head + "disk = [\n '/i,,xvda',\n\n '/j,raw,xvdb,x' ]\n", 6, "disk[1]", #"access "x" is not one of r, ro, w, rw, w!"#),
            (head + "disk = [ '/i,,xvda', '/j,,xvda' ]\n", 3, "disk[1]", "same device as disk[0]"),
            (head + "disk = [ '/i,,xvda',\n 'vdev=xvdb, engine=spdk, target=/j' ]\n", 4, "disk[1]", #"engine "spdk" is not one of io_uring, libaio"#),
            (head + "disk = [ 1 ]\n", 3, "disk[0]", "expected a quoted string"),
            (head + "vif = [ '',\n 'mac=zz' ]\n", 4, "vif[1]", "not six hex pairs"),
            (head + "on_poweroff = 'coredump-destroy'\n", 3, "on_poweroff", "not supported"),
            (head + "on_reboot = 'reboot'\n", 3, "on_reboot", "use destroy, restart, preserve or rename-restart"),
            (head + "extra = 'a \"b'\n", 3, "extra", "no closing"),
            (head + "name = 'h'\n", 3, "name", "set twice"),
        ]
        for (text, line, key, words) in cases {
            guard let error = refusal(text) else {
                Issue.record("parsed: \(text)")
                continue
            }
            #expect(error.fileName == "guest.cfg", "\(error)")
            #expect(error.line == line, "\(error)")
            #expect(error.key == key, "\(error)")
            #expect(error.message.contains(words), "\(error)")
        }
    }

    @Test func descriptionReadsLikeACompilerMessage() {
        let error = refusal("name = 'g'\nkernel = '/g'\n\n\n\n\ndisk = [ '/i,,xvda', '/j,raw,xvdb,x' ]\n")
        #expect(error?.description == #"guest.cfg:7: disk[1]: access "x" is not one of r, ro, w, rw, w!"#)
    }

    @Test func aQuotedMemoryIsANumberAsInXl() throws {
        #expect(try DomainConfig(parsing: "name='g'\nkernel='/g'\nmemory='256'\n", fileName: "g.cfg").memory == 256)
    }

    @Test func ignoredKeysAreListedInOrder() throws {
        let config = try DomainConfig(
            parsing: "type = 'pv'\nname = 'g'\nbuilder = 'linux'\nkernel = '/g'\nvcpus = 4\n", fileName: "g.cfg")
        #expect(config.ignored == [IgnoredSetting(key: "type", line: 1), IgnoredSetting(key: "builder", line: 3), IgnoredSetting(key: "vcpus", line: 5)])
    }

    /// Random bytes, and random mutations of a valid config, never trap: each input
    /// parses or throws a DomainConfigError (a located one, from the file parser on).
    @Test func randomInputNeverTraps() {
        var random = SplitMix(seed: 0x15_C0FF1C)
        let alphabet = Array("=[]'\",;#\n \t\\:/@!.0123456789abcdefxvdrwmacipt-+".utf8)
        let text = Self.pvlinux.replacingOccurrences(
            of: "vif = [ '' ]", with: "vif = [ 'mac=00:16:3e:00:00:01, rate=10Mb/s@20ms, ip=10.0.0.1', ]")
        let valid = Array(text.utf8)
        #expect(throws: Never.self) { try DomainConfig(parsing: text, fileName: "fuzz.cfg") }
        var parsed = 0
        var refused = 0
        for round in 0..<3000 {
            var bytes: [UInt8]
            if round % 3 == 0 {
                bytes = (0..<Int.random(in: 0...200, using: &random)).map { _ in
                    Bool.random(using: &random)
                        ? UInt8.random(in: 0...255, using: &random) : alphabet.randomElement(using: &random)!
                }
            } else {
                bytes = valid
                for _ in 0..<Int.random(in: 1...8, using: &random) {
                    let at = Int.random(in: 0..<bytes.count, using: &random)
                    switch Int.random(in: 0..<3, using: &random) {
                    case 0: bytes[at] = alphabet.randomElement(using: &random)!
                    case 1: bytes.insert(UInt8.random(in: 0...255, using: &random), at: at)
                    default: if bytes.count > 1 { bytes.remove(at: at) }
                    }
                }
            }
            do {
                let file = try XLConfigFile(parsing: bytes, fileName: "fuzz.cfg")
                _ = try DomainConfig(file: file)
                parsed += 1
            } catch {
                #expect(error.fileName == "fuzz.cfg")
                #expect(!error.description.isEmpty)
                refused += 1
            }
        }
        // With this seed about a quarter parse (mutations in comments, in names and paths).
        #expect(parsed + refused == 3000)
        #expect(parsed > 300 && refused > 300)
    }
}
