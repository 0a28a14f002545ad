import SystemPackage
import XenNetProtocol

/// Where a vif's frames go and come from: a TAP on a bridge, or memory in
/// tests and benchmarks. Received from by one backend queue thread at a time; with a
/// multi-queue vif several queue threads may `send` at once (each frame whole).
public protocol NetworkAttachment: AnyObject, Sendable {
    /// The receive queues a vif of `count` queues uses, this one first and at most
    /// `count`: the vif's queue `i` receives from `queues[i]` and sends into
    /// `queues[i % queues.count]`; queues past the end only send. Each hands out the frames
    /// of a flow in order, and one flow always through the same queue (a multi-queue TAP
    /// steers by flow). Called at each connection, before any queue starts. `[self]` by default.
    func receiveQueues(_ count: Int) -> [any NetworkAttachment]
    /// Readable while a frame waits for `receive`; nil if the attachment
    /// offers no descriptor (the queue then polls it on every wake-up).
    var fileDescriptor: FileDescriptor? { get }
    /// Takes one waiting frame into `buffer`; returns where the frame lies in
    /// it and its offload state, or nil when none waits.
    func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> (frame: Range<Int>, offload: FrameOffload)?
    /// Hands one frame on; false when the attachment could not take it now
    /// (the frame is dropped and counted).
    func send(_ frame: UnsafeRawBufferPointer, offload: FrameOffload) throws -> Bool
}

extension NetworkAttachment {
    /// One receive queue: the attachment itself.
    public func receiveQueues(_ count: Int) -> [any NetworkAttachment] { [self] }
}
