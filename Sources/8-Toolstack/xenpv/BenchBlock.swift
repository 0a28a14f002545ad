import ArgumentParser
import Foundation
import XenBlockBenchmark
import XenBlockStorage

extension BlockBenchmarkConfiguration.Pattern: ExpressibleByArgument {}

/// `xenpv bench block`: the block path on the simulator against an image file.
struct BenchBlock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "block",
        abstract: "I/O through blkfront, the ring, blkback and io_uring or libaio on an image file (simulated hypervisor).",
        discussion: """
            Compare with fio on the same file:
              swift run -c release xenpv bench block --image /tmp/disk.img --engine io_uring --rw randread --bs 4096 --queue-depth 32 --seconds 5 --json
              fio --name=x --filename=/tmp/disk.img --ioengine=io_uring --direct=1 --rw=randread --bs=4k --iodepth=32 --runtime=5 --time_based
            and the NBD engine with fio's on the same export:
              nbdkit -U /tmp/nbd.sock file /tmp/disk.img
              swift run -c release xenpv bench block --image 'nbd+unix:///?socket=/tmp/nbd.sock' --rw randread --queue-depth 32 --json
              fio --name=x --ioengine=nbd --uri='nbd+unix:///?socket=/tmp/nbd.sock' --rw=randread --bs=4k --iodepth=32 --runtime=5 --time_based
            """)

    @Option(help: "The image file (its size is the device size), an NBD export's URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH: the NBD engine), or :memory: for a 256 MiB memory disk (the driver path alone).")
    var image: String = ":memory:"

    @Flag(help: "Instead: the cost per segment of grant copy, map per request, and a persistent map.")
    var grantPaths = false

    @Option(help: "randread, randwrite, read or write.")
    var rw = BlockBenchmarkConfiguration.Pattern.randread

    @Option(help: "Bytes per operation (a multiple of 512, at most 1 MiB).")
    var bs = 4096

    @Option(help: "Operations in flight (1...128).")
    var queueDepth = 1

    @Option(help: "How long to run.")
    var seconds = 3.0

    @Option(help: "The storage engine on the image: io_uring or libaio (default: io_uring where the kernel allows it).")
    var engine: FileEngineKind?

    @Option(help: "io_uring: a kernel thread polls the submission ring, idle after this many ms (default: off).")
    var sqPollIdleMs: Int?

    @Flag(help: "Go through the page cache instead of O_DIRECT.")
    var buffered = false

    @Flag(help: "Grant-copy every segment through bounce pages instead of keeping the frontend's grants mapped (feature-persistent off).")
    var grantCopy = false

    @Flag(help: "Reads consume the data where it lies (BlockFrontend.read(at:count:consume:)) instead of copying it to a buffer.")
    var inPlace = false

    @Flag(help: "Each caller is a chain of callbacks (BlockFrontend.startRead/startWrite, answered on blkfront's queue thread, as the NBD export calls it) instead of a task awaiting read/write.")
    var callbacks = false

    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        guard bs >= 512, bs % 512 == 0, bs <= 1 << 20 else { throw ValidationError("--bs must be a multiple of 512, at most 1 MiB") }
        guard (1...128).contains(queueDepth) else { throw ValidationError("--queue-depth must be 1...128") }
        guard seconds > 0, seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600]") }
        if callbacks && inPlace { throw ValidationError("--in-place has no callback form; drop one of --callbacks and --in-place") }
        if let ms = sqPollIdleMs, !(1...10_000).contains(ms) { throw ValidationError("--sq-poll-idle-ms must be 1...10000") }
    }

    func run() async throws {
        if grantPaths {
            print(try GrantPathMeasurement.run())
            return
        }
        var c = BlockBenchmarkConfiguration(image: image)
        c.pattern = rw
        c.blockSize = bs
        c.queueDepth = queueDepth
        c.seconds = seconds
        c.direct = !buffered
        c.persistentGrants = !grantCopy
        c.inPlace = inPlace
        c.callbacks = callbacks
        c.engine = FileEngineKind.resolve(engine, for: image, logger: nil)
        c.sqPollIdle = sqPollIdleMs.map { .milliseconds($0) }
        let result = try await BlockBenchmark.run(c)
        print(json ? result.json : result.summary)
    }
}
