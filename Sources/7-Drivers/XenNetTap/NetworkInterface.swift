import CTap
import Glibc

/// Set-up of Linux network interfaces, done with the same ioctls `ip` uses.
public enum NetworkInterface {
    /// Brings `name` up or down.
    public static func setUp(_ name: String, _ up: Bool = true) throws(TapError) {
        guard ctap_set_up(name, up ? 1 : 0) == 0 else { throw .last("set \(name) \(up ? "up" : "down")") }
    }

    /// Sets the interface's MTU in bytes (`SIOCSIFMTU`); throws the ioctl's errno.
    public static func setMTU(_ name: String, _ mtu: Int) throws(TapError) {
        guard ctap_set_mtu(name, Int32(mtu)) == 0 else { throw .last("set MTU of \(name) to \(mtu)") }
    }

    /// The interface's Ethernet address.
    public static func macAddress(_ name: String) throws(TapError) -> [UInt8] {
        var mac = [UInt8](repeating: 0, count: 6)
        guard ctap_get_mac(name, &mac) == 0 else { throw .last("read MAC address of \(name)") }
        return mac
    }

    /// Puts `interface` on Linux bridge `bridge`, as Xen's `vif-bridge` script does.
    public static func addToBridge(_ bridge: String, interface: String) throws(TapError) {
        guard ctap_bridge_add(bridge, interface) == 0 else { throw .last("add \(interface) to bridge \(bridge)") }
    }
}

/// A network namespace, entered by the calling thread only.
public enum NetworkNamespace {
    /// Runs `body` on this thread inside the namespace at `path` (for example
    /// `/run/netns/NAME`), then returns the thread to its own namespace.
    /// Descriptors opened inside (a TAP) stay in that namespace for good.
    public static func run<T>(in path: String, _ body: () throws -> T) throws -> T {
        let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard home >= 0 else { throw TapError.last("open this thread's network namespace") }
        defer { Glibc.close(home) }
        let target = open(path, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw TapError.last("open network namespace \(path)") }
        defer { Glibc.close(target) }
        guard ctap_setns_net(target) == 0 else { throw TapError.last("enter network namespace \(path)") }
        // Returning home cannot be skipped: the thread belongs to a pool.
        defer { precondition(ctap_setns_net(home) == 0, "cannot return the thread to its network namespace") }
        return try body()
    }
}
