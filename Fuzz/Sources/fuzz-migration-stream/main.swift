import FuzzSupport

// libFuzzer's archive brings its own main, which needs this symbol to link;
// SwiftPM's `main` (this file) wins and runs the same function through the driver.
@_cdecl("LLVMFuzzerTestOneInput")
func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    fuzzOne(fuzzInput(data, size))
    return 0
}

runFuzzer(testOneInput)
