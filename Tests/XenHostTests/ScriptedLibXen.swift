import CXen
import CXenLibs
import Glibc
import Synchronization
@testable import XenHost

/// A libxen that records every call and answers from a script, so tests can
/// check call sequences and make any call fail with any errno.
final class ScriptedLibXen: Sendable {
    struct State {
        var calls: [String] = []
        var failing: [String: Int32] = [:]   // call name -> errno to fail with
        var errno: Int32 = 0
        var nextPort: Int32 = 5
        var pendingPorts: [Int32] = []
        var nextRef: UInt32 = 100
    }
    let state = Mutex(State())
    nonisolated(unsafe) let page: UnsafeMutableRawPointer  // the fake "mapped" memory; read-only after init
    nonisolated(unsafe) let fakeHandle = OpaquePointer(bitPattern: 0x1000)!  // never dereferenced
    let eventFD: Int32

    init() {
        page = UnsafeMutableRawPointer.allocate(byteCount: 16 * 4096, alignment: 4096)
        eventFD = cxen_eventfd(0, 0)
    }

    deinit {
        page.deallocate()
        close(eventFD)
    }

    var calls: [String] { state.withLock { $0.calls } }
    func fail(_ call: String, errno: Int32) { state.withLock { $0.failing[call] = errno } }
    func queuePending(_ port: Int32) { state.withLock { $0.pendingPorts.append(port) } }

    /// Records `call`; returns false (having set errno) when the script fails it.
    private func record(_ call: String, _ detail: String = "") -> Bool {
        state.withLock { s in
            s.calls.append(detail.isEmpty ? call : "\(call)(\(detail))")
            if let e = s.failing[call] { s.errno = e; return false }
            return true
        }
    }

    var library: LibXen {
        LibXen(
            errno: { [self] in state.withLock { $0.errno } },
            gnttabOpen: { [self] in record("gnttab_open") ? fakeHandle : nil },
            gnttabClose: { [self] _ in record("gnttab_close") ? 0 : -1 },
            gnttabMapDomainGrantRefs: { [self] _, count, domid, refs, prot in
                let list = (0 ..< Int(count)).map { String(refs[$0]) }.joined(separator: ",")
                let rw = prot & PROT_WRITE != 0 ? "rw" : "ro"
                return record("gnttab_map", "dom\(domid) [\(list)] \(rw)") ? page : nil
            },
            gnttabUnmap: { [self] _, address, count in
                record("gnttab_unmap", "\(address == page ? "page" : "?") \(count)") ? 0 : -1
            },
            gnttabGrantCopy: { [self] _, count, segs in
                var parts: [String] = []
                for i in 0 ..< Int(count) {
                    let s = segs[i]
                    let src = s.flags & UInt16(GNTCOPY_source_gref) != 0 ? "d\(s.source.foreign.domid)/r\(s.source.foreign.ref)+\(s.source.foreign.offset)" : "local"
                    let dst = s.flags & UInt16(GNTCOPY_dest_gref) != 0 ? "d\(s.dest.foreign.domid)/r\(s.dest.foreign.ref)+\(s.dest.foreign.offset)" : "local"
                    parts.append("\(src)->\(dst):\(s.len)")
                    segs[i].status = s.len > 4096 ? Int16(GNTST_bad_copy_arg) : Int16(GNTST_okay)
                }
                return record("gnttab_copy", parts.joined(separator: " ")) ? 0 : -1
            },
            gntshrOpen: { [self] in record("gntshr_open") ? fakeHandle : nil },
            gntshrClose: { [self] _ in record("gntshr_close") ? 0 : -1 },
            gntshrSharePages: { [self] _, domid, count, refs, writable in
                guard record("gntshr_share", "dom\(domid) \(count) \(writable != 0 ? "rw" : "ro")") else { return nil }
                state.withLock { s in
                    for i in 0 ..< Int(count) { refs[i] = s.nextRef; s.nextRef += 1 }
                }
                return page
            },
            gntshrUnshare: { [self] _, _, count in record("gntshr_unshare", "\(count)") ? 0 : -1 },
            evtchnOpen: { [self] in record("evtchn_open") ? fakeHandle : nil },
            evtchnClose: { [self] _ in record("evtchn_close") ? 0 : -1 },
            evtchnFd: { [self] _ in eventFD },
            evtchnNotify: { [self] _, port in record("evtchn_notify", "\(port)") ? 0 : -1 },
            evtchnBindUnbound: { [self] _, domid in
                record("evtchn_bind_unbound", "dom\(domid)") ? state.withLock { s in s.nextPort += 1; return s.nextPort } : -1
            },
            evtchnBindInterdomain: { [self] _, domid, port in
                record("evtchn_bind_interdomain", "dom\(domid) \(port)") ? state.withLock { s in s.nextPort += 1; return s.nextPort } : -1
            },
            evtchnPending: { [self] _ in
                guard record("evtchn_pending") else { return -1 }
                return state.withLock { s in
                    if s.pendingPorts.isEmpty { s.errno = EAGAIN; return -1 }
                    return s.pendingPorts.removeFirst()
                }
            },
            evtchnUnmask: { [self] _, port in record("evtchn_unmask", "\(port)") ? 0 : -1 },
            evtchnUnbind: { [self] _, port in record("evtchn_unbind", "\(port)") ? 0 : -1 }
        )
    }
}
