// storage-bench: drives a file engine (UringStorage or LibaioStorage) the way a backend
// queue thread does (submit a batch, reap, resubmit) and prints one JSON object, with the
// process's CPU time per operation.
//
//   storage-bench --image PATH [--engine io_uring|libaio] [--rw randread|randwrite|read|write] [--bs BYTES]
//                 [--queue-depth N] [--seconds S] [--piece BYTES] [--shared 1]
import Foundation
import Glibc
import SystemPackage
import XenBlockStorage

struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A usage mistake or a failed set-up: one line on standard error, exit status 2.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("storage-bench: \(message)\n".utf8))
    exit(2)
}

let usage = "usage: storage-bench --image PATH [--engine io_uring|libaio] [--rw randread|randwrite|read|write] [--bs BYTES] [--queue-depth N] [--seconds S] [--piece BYTES] [--shared 1] [--huge 1]"

func runBenchmark() throws {
    var arguments = [String: String]()
    var it = CommandLine.arguments.dropFirst().makeIterator()
    while let key = it.next() {
        guard key.hasPrefix("--"), let value = it.next() else { fail(usage) }
        arguments[String(key.dropFirst(2))] = value
    }
    /// The positive whole number `--name` gives, or `fallback`.
    func count(_ name: String, _ fallback: Int) -> Int {
        guard let text = arguments[name] else { return fallback }
        guard let n = Int(text), n > 0 else { fail("--\(name) must be a positive whole number, not \(text.debugDescription)") }
        return n
    }
    guard let image = arguments["image"] else { fail("--image PATH is required\n" + usage) }
    let mode = arguments["rw"] ?? "randread"
    guard ["randread", "randwrite", "read", "write"].contains(mode) else { fail("--rw must be randread, randwrite, read or write, not \(mode)") }
    let blockSize = count("bs", 4096)
    let depth = count("queue-depth", 32)
    guard let seconds = Double(arguments["seconds"] ?? "5"), seconds > 0, seconds.isFinite else { fail("--seconds must be a positive number") }
    // --piece: bytes per iovec (blkback hands libaio one iovec per 4 KiB segment).
    let piece = count("piece", blockSize)
    guard blockSize % piece == 0 else { fail("--piece must divide --bs") }
    let pieces = blockSize / piece
    let isWrite = mode.hasSuffix("write")
    let isRandom = mode.hasPrefix("rand")

    let kind: FileEngineKind
    if let name = arguments["engine"] {
        guard let k = FileEngineKind(rawValue: name) else { fail("--engine must be io_uring or libaio, not \(name.debugDescription)") }
        kind = k
    } else {
        kind = FileEngineKind.preferred.kind
    }
    let engine: any FileStorageEngine
    do {
        engine = try kind.open(FilePath(image), directIO: .required, queueDepth: depth)
    } catch {
        fail("cannot open \(image): \(error)")
    }
    let blocks = Int(engine.byteCount) / blockSize
    guard blocks > depth else { fail("\(image) is too small: \(engine.byteCount) bytes for \(depth) requests of \(blockSize)") }

    // --shared 1: buffers in a shared tmpfs mapping (shmem pages, as the simulator's
    // memfd-backed grant mappings are) instead of anonymous memory.
    let memory: UnsafeMutableRawPointer
    if arguments["shared"] == "1" {
        let path = "/dev/shm/storage-bench-\(getpid())"
        let fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0o600)
        unlink(path)
        precondition(fd >= 0 && ftruncate(fd, off_t(depth * blockSize)) == 0, "cannot make \(path)")
        memory = mmap(nil, depth * blockSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
    } else if arguments["huge"] == "1" {
        let bytes = (depth * blockSize + (2 << 20) - 1) / (2 << 20) * (2 << 20)
        let raw = mmap(nil, bytes + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
        memory = UnsafeMutableRawPointer(bitPattern: (Int(bitPattern: raw) + (2 << 20) - 1) / (2 << 20) * (2 << 20))!
        precondition(madvise(memory, bytes, 14 /* MADV_HUGEPAGE */) == 0, "madvise")
    } else {
        memory = UnsafeMutableRawPointer.allocate(byteCount: depth * blockSize, alignment: 4096)
    }
    memset(memory, 0x5A, depth * blockSize)
    let iovecs = UnsafeMutablePointer<iovec>.allocate(capacity: depth * pieces)
    var ops = [StorageOperation](repeating: .flush(tag: 0), count: depth)
    var completions = [StorageCompletion](repeating: .empty, count: depth)
    var started = [UInt64](repeating: 0, count: depth)
    let maxSamples = 1 << 24
    var latencies = [UInt32]()
    latencies.reserveCapacity(maxSamples)
    // A user-space generator: SystemRandomNumberGenerator costs a getrandom(2) per number.
    var rng = SplitMix(state: UInt64(truncatingIfNeeded: now()))
    var sequential = 0

    func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    func makeOp(_ slot: Int, into index: Int) {
        let block: Int
        if isRandom {
            block = Int.random(in: 0..<blocks, using: &rng)
        } else {
            block = sequential
            sequential = (sequential + 1) % blocks
        }
        // The engine may advance the iovec after a short transfer: rebuild it every time.
        for p in 0..<pieces {
            iovecs[slot * pieces + p] = iovec(iov_base: memory + slot * blockSize + p * piece, iov_len: piece)
        }
        let buffers = UnsafeMutableBufferPointer(start: iovecs + slot * pieces, count: pieces)
        ops[index] = isWrite
            ? .write(tag: UInt64(slot), offset: UInt64(block * blockSize), buffers: buffers)
            : .read(tag: UInt64(slot), offset: UInt64(block * blockSize), buffers: buffers)
        started[slot] = now()
    }

    for slot in 0..<depth { makeOp(slot, into: slot) }
    var pending = depth
    func cpuSeconds() -> Double {
        var u = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &u) == 0 else { return 0 }
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }
    let cpuBegin = cpuSeconds()
    let begin = now()
    let end = begin + UInt64(seconds * 1e9)
    var done = 0
    var failures = 0
    var submitted = try ops.withUnsafeBufferPointer { try engine.submit($0) }
    precondition(submitted == depth)

    var stop = false
    while !stop || pending > 0 {
        let n = try completions.withUnsafeMutableBufferPointer { try engine.reap(into: $0, timeout: .seconds(1)) }
        let t = now()
        var refill = 0
        for i in 0..<n {
            let slot = Int(completions[i].tag)
            if !completions[i].succeeded { failures += 1 }
            if latencies.count < maxSamples { latencies.append(UInt32(min(t - started[slot], UInt64(UInt32.max)))) }
            done += 1
            pending -= 1
            if !stop {
                makeOp(slot, into: refill)
                refill += 1
            }
        }
        if refill > 0 {
            let accepted = try ops.withUnsafeBufferPointer { try engine.submit(UnsafeBufferPointer(rebasing: $0[0..<refill])) }
            precondition(accepted == refill)
            pending += refill
        }
        if t >= end { stop = true }
    }
    let elapsed = Double(now() - begin) / 1e9
    let cpu = cpuSeconds() - cpuBegin
    engine.close()

    latencies.sort()
    func percentile(_ p: Double) -> Double {
        latencies.isEmpty ? 0 : Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]) / 1000
    }
    let iops = Double(done) / elapsed
    let mib = iops * Double(blockSize) / 1_048_576
    print("""
    {"engine": "\(kind)", "rw": "\(mode)", "bs": \(blockSize), "queue_depth": \(depth), "seconds": \(String(format: "%.2f", elapsed)), \
    "ops": \(done), "errors": \(failures), "iops": \(Int(iops)), "mib_per_second": \(String(format: "%.1f", mib)), \
    "p50_us": \(String(format: "%.1f", percentile(0.5))), "p99_us": \(String(format: "%.1f", percentile(0.99))), \
    "cpu_us_per_op": \(String(format: "%.2f", done > 0 ? cpu * 1e6 / Double(done) : 0))}
    """)

}

try runBenchmark()
