import Glibc
import TestSupport
import Testing
import XenSockets

/// The daemons' socket files, tried as a careless umask and a hostile local user would.
@Suite struct LocalSocketTests {
    func mode(_ path: String) -> mode_t {
        var st = stat()
        guard lstat(path, &st) == 0 else { return 0 }
        return st.st_mode
    }

    @Test func theModeIsFixedWhateverTheUmask() throws {
        let s = try TemporaryDirectory(prefix: "xenpv-sock")
        let old = umask(0)
        defer { umask(old) }
        let fd = try LocalSocket.listen(at: s.path("a.sock"), kind: .seqpacket)
        defer { close(fd) }
        #expect(mode(s.path("a.sock")) & 0o777 == 0o600)
        #expect(mode(s.path("a.sock")) & S_IFMT == S_IFSOCK)
    }

    @Test func aGroupGetsExactly0660EvenUnderANarrowUmask() throws {
        let s = try TemporaryDirectory(prefix: "xenpv-sock")
        let old = umask(0o077)
        defer { umask(old) }
        let fd = try LocalSocket.listen(at: s.path("g.sock"), kind: .stream, access: SocketAccess(group: getegid()))
        defer { close(fd) }
        #expect(mode(s.path("g.sock")) & 0o777 == 0o660)
    }

    @Test(arguments: ["", "\0abstract", "a\0b", String(repeating: "x", count: 200)])
    func namesWithoutFilePermissionsOrTooLongAreRefused(_ path: String) {
        #expect(throws: LocalSocketError.self) { try LocalSocket.listen(at: path, kind: .seqpacket) }
    }

    @Test func aRegularFileIsNeverRemoved() throws {
        let s = try TemporaryDirectory(prefix: "xenpv-sock")
        let file = s.path("precious")
        let fd = open(file, O_CREAT | O_WRONLY, 0o600)
        _ = write(fd, "data", 4)
        close(fd)
        do {
            _ = try LocalSocket.listen(at: file, kind: .stream)
            Issue.record("listened over a regular file")
        } catch {
            #expect(error.code == .notASocket)
        }
        #expect(mode(file) & S_IFMT == S_IFREG)
        var st = stat()
        #expect(lstat(file, &st) == 0 && st.st_size == 4)
    }

    @Test func aLiveServerIsNotReplacedButAStaleSocketIs() throws {
        let s = try TemporaryDirectory(prefix: "xenpv-sock")
        let path = s.path("live.sock")
        let first = try LocalSocket.listen(at: path, kind: .seqpacket)
        do {
            _ = try LocalSocket.listen(at: path, kind: .seqpacket)
            Issue.record("a second server took a live socket's name")
        } catch {
            #expect(error.code == .inUse)
        }
        close(first)
        // Closed without unlinking: the name is stale, and may be taken over.
        let second = try LocalSocket.listen(at: path, kind: .seqpacket)
        close(second)
    }

    @Test func peerCredentialsNameTheConnectingProcess() throws {
        var pair: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]); close(pair[1]) }
        let peer = try #require(PeerCredentials.of(pair[0]))
        #expect(peer.pid == getpid())
        #expect(peer.uid == geteuid())
        #expect(peer.gid == getegid())
        #expect(TrustedPeers().trusts(peer))
        #expect(!TrustedPeers().trusts(PeerCredentials(pid: 1, uid: 65534, gid: 65534)))
        #expect(TrustedPeers(group: 65534).trusts(PeerCredentials(pid: 1, uid: 65534, gid: 65534)))
        #expect(PeerCredentials.of(-1) == nil)
    }
}
