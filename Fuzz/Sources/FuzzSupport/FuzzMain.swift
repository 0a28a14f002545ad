import CFuzzerDriver
#if canImport(Glibc)
import Glibc
#endif

/// Runs libFuzzer with this process's arguments, calling `target` once per input, and
/// exits with libFuzzer's status. `target` must never trap, hang or leak.
///
/// SwiftPM links an executable target with `main` pointing at the module's own entry
/// point, so libFuzzer's `main` is never used; its `LLVMFuzzerRunDriver` is.
public func runFuzzer(_ target: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Never {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, target))
}

/// The input as a raw buffer (a zero-length input has no pointer).
@inlinable public func fuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(start: data.map(UnsafeRawPointer.init), count: data == nil ? 0 : size)
}
