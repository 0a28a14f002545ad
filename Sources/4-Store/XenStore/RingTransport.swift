import Atomics
import Foundation
import XenABI
import XenHypervisor

/// A guest's transport to the store through its xenstore page and event channel, as a real
/// guest kernel talks to xenstored: requests go into the page's `req` ring, replies and watch
/// events come back in `rsp`, and each side rings the other's event channel after moving data.
public final class XenStoreRingTransport: XenStoreTransport, @unchecked Sendable {
    // @unchecked: the ring's page stays shared until `deinit`; `closed` is atomic; every
    // other stored property is a `let`; `send` is called by one thread at a time (the client
    // serialises its sends) and `receive` by the client's reader thread only.
    private let ring: XenStoreDomainRing
    private let events: any EventChannels
    private let sharer: any GrantSharer
    private let pages: SharedPages
    /// The grant reference of the page, for `XS_INTRODUCE`'s frame field.
    public let ringRef: GrantRef
    /// The guest's end of the event channel, for `XS_INTRODUCE`'s port field.
    public let port: EventPort
    private let closed = ManagedAtomic(false)
    /// How long `send` waits for room in the request ring before giving up, in seconds.
    /// Fixed at creation: senders and the reader share the transport across threads.
    public let sendTimeout: Double

    /// Shares a fresh page with `daemon` and allocates an unbound event channel for it; the
    /// toolstack then introduces the domain with `ringRef` and `port`. `send` gives up after
    /// `sendTimeout` seconds without room in the request ring.
    public init(hypervisor: any Hypervisor, daemon: DomainID = .dom0, sendTimeout: Double = 5) throws(XenStoreError) {
        self.sendTimeout = sendTimeout
        do {
            sharer = try hypervisor.openGrantSharer()
            pages = try sharer.sharePages(count: 1, with: daemon, writable: true)
            events = try hypervisor.openEventChannels()
            port = try events.bindUnbound(remote: daemon)
        } catch {
            throw XenStoreError(.system, "setting up the xenstore page: \(error)")
        }
        ringRef = pages.refs[0]
        ring = XenStoreDomainRing(page: pages.memory.base, side: .guest)
    }

    deinit {
        events.close()
        // Refused while the daemon still maps the page; the simulator then reports it.
        try? sharer.unshare(pages)
        sharer.close()
    }

    /// Copies `bytes` into the `req` ring, notifying the daemon after each chunk, and waits
    /// (backing off up to 1 ms) while the ring is full.
    ///
    /// Throws `ETIMEDOUT` if the ring stays full for ``sendTimeout`` seconds, `ECONNRESET`
    /// after ``shutdown()``, and `EPROTO` if the daemon's `req_cons` is out of range. On a
    /// throw, part of the message may already be in the ring: the connection is unusable.
    /// One caller at a time.
    public func send(_ bytes: [UInt8]) throws(XenStoreError) {
        var offset = 0
        var pause: UInt32 = 10
        let deadline = Date().addingTimeInterval(sendTimeout)
        while offset < bytes.count {
            guard !closed.load(ordering: .relaxed) else { throw XenStoreError(.closed, "transport closed") }
            let n = try ring.write(bytes, from: offset)
            if n > 0 {
                offset += n
                pause = 10
                notify()
                continue
            }
            // Ring full: the daemon drains it and notifies; back off briefly, bounded.
            guard Date() < deadline else { throw XenStoreError(.timedOut, "request ring stayed full") }
            usleep(pause)
            pause = min(pause * 2, 1000)
        }
    }

    /// Blocks until the `rsp` ring holds bytes, copies up to `buffer.count` of them and
    /// notifies the daemon that room freed; returns 0 once ``shutdown()`` has been called.
    ///
    /// Waits on the event channel in 50 ms slices, so a shutdown is seen within one slice.
    /// Throws `EPROTO` if the daemon's `rsp_prod` is more than a ring ahead, `ECONNRESET` if
    /// the event channel fails. Called by the client's reader thread only.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(XenStoreError) -> Int {
        while true {
            if closed.load(ordering: .relaxed) { return 0 }
            let n = try ring.read(into: buffer)
            if n > 0 {
                notify()  // room for more replies
                return n
            }
            do {
                _ = try events.wait(timeoutMilliseconds: 50)
                while let p = try events.pending() { try events.unmask(p) }
            } catch {
                throw XenStoreError(.closed, "event channel: \(error)")
            }
        }
    }

    /// Marks the transport closed: `send` throws and `receive` returns 0 from its next check.
    /// The page and event channel stay until the transport is released.
    public func shutdown() { closed.store(true, ordering: .relaxed) }

    private func notify() { try? events.notify(port) }
}
