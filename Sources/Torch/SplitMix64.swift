import Foundation

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny seeded generator whose whole state is one integer, so a cursor can
/// save it, and whose sequence is the same on every platform and toolchain. Used where randomness must stay apart
/// from the torch generators: the trainer's prompt order (so the noise stream does not depend on shuffling) and
/// ShapesWorld's scenes.
public struct SplitMix64: RandomNumberGenerator, Sendable, Equatable, Codable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in 0..<bound (Lemire's multiply-and-reject). Ours rather than the standard library's `random(in:)`,
    /// whose algorithm may change between Swift versions: a saved order must replay on any toolchain.
    public mutating func next(below bound: UInt64) -> UInt64 {
        precondition(bound > 0, "next(below:) needs a positive bound")
        var product = next().multipliedFullWidth(by: bound)
        if product.low < bound {
            let threshold = (0 &- bound) % bound
            while product.low < threshold { product = next().multipliedFullWidth(by: bound) }
        }
        return product.high
    }

    /// A Fisher–Yates (Durstenfeld) permutation of 0..<count.
    public mutating func permutation(_ count: Int) -> [Int] {
        var order = Array(0..<count)
        var i = count - 1
        while i > 0 {
            order.swapAt(i, Int(next(below: UInt64(i + 1))))
            i -= 1
        }
        return order
    }
}
