import SystemPackage
import XenNetProtocol

/// Where a vif's frames go and come from: a TAP on a bridge, or memory in
/// tests and benchmarks. Used by one backend queue thread at a time.
public protocol NetworkAttachment: AnyObject, Sendable {
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
