/// SplitMix64: small, seedable, the same sequence everywhere, so a failing run
/// can be replayed from its seed. Every seeded test uses this one generator;
/// changing its arithmetic would change those tests' inputs.
public struct SplitMix: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// `count` random bytes (a multiple of 8), eight from each draw; with `oddWords` every
    /// 8-byte word is odd, so nonzero: a test can tell written bytes from a sparse file's zeros.
    public mutating func bytes(_ count: Int, oddWords: Bool = false) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { raw in
            for i in stride(from: 0, to: raw.count - 7, by: 8) {
                raw.storeBytes(of: oddWords ? next() | 1 : next(), toByteOffset: i, as: UInt64.self)
            }
        }
        return out
    }
}
