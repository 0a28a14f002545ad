/// What one ring-throughput run does: the knobs of `xenpv bench ring` and of
/// the C reference `ringbench` (`-m`, `-q`, `-n`, `-f`, `-b`).
public struct RingBenchmarkConfiguration: Sendable, Hashable {
    /// How a side with nothing to do waits for its peer.
    public enum Mode: String, CaseIterable, Sendable, Hashable {
        /// Both sides poll the ring with a pause loop; push decisions are only
        /// counted (ringbench `-m busy`).
        case busy
        /// A side the final check finds idle sleeps on its event channel; a
        /// push that says "notify" notifies (ringbench `-m eventfd`).
        case event
        /// Poll for `spinNanoseconds`, then do as `event`.
        case adaptive
    }

    /// How an idle side waits (ringbench `-m`).
    public var mode: Mode
    /// Requests to exchange.
    public var requests: UInt64
    /// Most requests outstanding at once; 0 or more than the ring means the ring size.
    public var queueDepth: UInt32
    /// How long `adaptive` polls before the final check and sleep.
    public var spinNanoseconds: UInt64
    /// CPUs the frontend and backend threads are pinned to; nil leaves them unpinned.
    public var frontCPU: Int32?
    /// The CPU the backend thread is pinned to; nil leaves it unpinned.
    public var backCPU: Int32?
    /// If nonzero, the frontend stops for this long once, halfway, with every
    /// request answered, and the backend's CPU time in that pause is reported:
    /// what an idle ring costs. The pause is not counted in the elapsed time.
    public var idleProbeMilliseconds: UInt32

    /// A run of `requests` requests in `mode`; by default queue depth 32, a 5 µs spin for `adaptive`, the frontend on CPU 0, the backend on CPU 1, no idle probe.
    public init(mode: Mode, requests: UInt64, queueDepth: UInt32 = 32, spinNanoseconds: UInt64 = 5_000,
                frontCPU: Int32? = 0, backCPU: Int32? = 1, idleProbeMilliseconds: UInt32 = 0) {
        self.mode = mode
        self.requests = requests
        self.queueDepth = queueDepth
        self.spinNanoseconds = spinNanoseconds
        self.frontCPU = frontCPU
        self.backCPU = backCPU
        self.idleProbeMilliseconds = idleProbeMilliseconds
    }
}

/// Why a run stopped early: set-up failed or a side saw the protocol broken.
public struct RingBenchmarkError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Where the run failed.
    public enum Code: Hashable, Sendable {
        /// Sharing, mapping, binding, the ring's geometry or a thread could not be set up.
        case setup
        /// The peer broke the ring protocol (a `RingError` from a producer-index check).
        case ring
        /// The frontend read a response with an unexpected id or a status other than okay.
        case badResponse
        /// Waiting on or notifying an event channel failed.
        case eventChannel
        /// A thread could not be pinned to its CPU.
        case pinning
        /// The other side failed first; its error is the one reported.
        case aborted
        /// The peer (another process) sent nothing for the watch's limit.
        case peerSilent
    }

    /// Where the run failed.
    public var code: Code
    /// What failed, with the underlying error, for a person.
    public var message: String

    /// An error with `code`, described by `message`.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    /// The message.
    public var description: String { message }
}

extension RingBenchmarkConfiguration {
    /// `queueDepth` as used on a ring of `ringEntries`: 0 or more than the ring means the ring.
    func queueDepth(ringEntries: UInt32) -> UInt32 {
        queueDepth == 0 || queueDepth > ringEntries ? ringEntries : queueDepth
    }
}
