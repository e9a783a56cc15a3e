import Foundation
import Torch

/// ShapesWorld: the project's embedded default world. Tiny 32×32 RGB scenes of one shape on a plain background,
/// their captions, a held-out split of attribute combinations, and an oracle that reads the attributes back from the
/// pixels. Everything is deterministic: the same seed gives the same scenes, captions and bytes on every machine.

/// The shapes a scene can hold.
public enum Shape: String, CaseIterable, Sendable, Hashable, Codable {
    case circle, square, triangle
}

/// The eight named colours, the corners of the RGB cube pulled in to 20 and 235 (so that colour shifts and noise
/// have room on both sides). Any two differ by at least 215 in one channel (Euclidean distance ≥ 215), so a pixel
/// within 107 of a named colour is nearer to it than to any other.
public enum NamedColour: String, CaseIterable, Sendable, Hashable, Codable {
    case red, green, blue, yellow, cyan, magenta, white, black

    public static let low: UInt8 = 20
    public static let high: UInt8 = 235

    /// The exact RGB value a clean render uses.
    public var rgb: (r: UInt8, g: UInt8, b: UInt8) {
        let (l, h) = (Self.low, Self.high)
        switch self {
        case .red: return (h, l, l)
        case .green: return (l, h, l)
        case .blue: return (l, l, h)
        case .yellow: return (h, h, l)
        case .cyan: return (l, h, h)
        case .magenta: return (h, l, h)
        case .white: return (h, h, h)
        case .black: return (l, l, l)
        }
    }

    var vector: SIMD3<Double> { let c = rgb; return SIMD3(Double(c.r), Double(c.g), Double(c.b)) }

    /// The named colour nearest (Euclidean, in RGB) to `value`, and its distance.
    public static func nearest(to value: SIMD3<Double>) -> (colour: NamedColour, distance: Double) {
        var best = (colour: NamedColour.red, distance: Double.infinity)
        for c in allCases {
            let d = c.vector - value
            let distance = (d * d).sum().squareRoot()
            if distance < best.distance { best = (c, distance) }
        }
        return best
    }
}

/// Small shapes fit an 8×8 box, large ones a 14×14 box.
public enum Size: String, CaseIterable, Sendable, Hashable, Codable {
    case small, large

    /// Half the side of the shape's bounding box, in pixels.
    public var radius: Double { self == .small ? 4 : 7 }
}

/// Where the shape's bounding box is centred.
public enum Position: String, CaseIterable, Sendable, Hashable, Codable {
    case left, right, top, bottom, centre

    /// The centre of the shape's bounding box in pixel coordinates (x right, y down; the image spans 0...32).
    public var centre: (x: Double, y: Double) {
        switch self {
        case .left: return (8, 16)
        case .right: return (24, 16)
        case .top: return (16, 8)
        case .bottom: return (16, 24)
        case .centre: return (16, 16)
        }
    }
}

/// One scene: a shape of a colour, a size and a position on a background of another colour.
public struct Scene: Hashable, Sendable, Codable, CustomStringConvertible {
    public var shape: Shape
    public var colour: NamedColour
    public var size: Size
    public var position: Position
    public var background: NamedColour

    public init(shape: Shape, colour: NamedColour, size: Size, position: Position, background: NamedColour) {
        precondition(colour != background, "Scene: the shape's colour must differ from the background's (\(colour))")
        self.shape = shape
        self.colour = colour
        self.size = size
        self.position = position
        self.background = background
    }

    /// Every scene of the world (3 × 8 × 2 × 5 × 7 = 1680), in a fixed order.
    public static let all: [Scene] = Shape.allCases.flatMap { shape in
        NamedColour.allCases.flatMap { colour in
            Size.allCases.flatMap { size in
                Position.allCases.flatMap { position in
                    NamedColour.allCases.filter { $0 != colour }.map { background in
                        Scene(shape: shape, colour: colour, size: size, position: position, background: background)
                    }
                }
            }
        }
    }

    /// A uniformly random scene of the split: a uniform (shape, colour) pair of the split, then a uniform size,
    /// position and background (≠ colour). Uses only `generator.next()`, so a seeded generator gives the same scenes
    /// with every Swift version.
    public static func random(split: Split = .train, using generator: inout some RandomNumberGenerator) -> Scene {
        let pairs = split.pairs
        let pair = pairs[generator.below(pairs.count)]
        let size = Size.allCases[generator.below(Size.allCases.count)]
        let position = Position.allCases[generator.below(Position.allCases.count)]
        let backgrounds = NamedColour.allCases.filter { $0 != pair.colour }
        let background = backgrounds[generator.below(backgrounds.count)]
        return Scene(shape: pair.shape, colour: pair.colour, size: size, position: position, background: background)
    }

    /// `count` distinct random scenes of the split (all of them, in draw order, if it has fewer), drawn with
    /// `random(split:using:)`, repeats skipped.
    public static func distinct(_ count: Int, split: Split, using generator: inout some RandomNumberGenerator) -> [Scene] {
        var scenes: [Scene] = []
        let wanted = min(count, split.scenes.count)
        while scenes.count < wanted {
            let scene = random(split: split, using: &generator)
            if !scenes.contains(scene) { scenes.append(scene) }
        }
        return scenes
    }

    /// A uniformly random training scene.
    public static func random(using generator: inout some RandomNumberGenerator) -> Scene {
        random(split: .train, using: &generator)
    }

    /// The attributes of the scene, all stated.
    public var attributes: PromptAttributes {
        PromptAttributes(shape: shape, colour: colour, size: size, position: position, background: background)
    }

    public var description: String {
        "\(size.rawValue) \(colour.rawValue) \(shape.rawValue) at \(position.rawValue) on \(background.rawValue)"
    }
}

/// The held-out split: every scene whose (shape, colour) pair is one of `heldOutPairs` (3 of the 24 pairs, 12.5%).
/// Each shape and each colour still appears in training with other partners, so the held-out scenes test
/// composition: "a magenta circle" is never seen, magenta things and circles are.
public enum Split: String, CaseIterable, Sendable, Hashable, Codable {
    case train
    case heldOut = "held-out"

    public static let heldOutPairs: [(shape: Shape, colour: NamedColour)] = [
        (.circle, .magenta), (.square, .cyan), (.triangle, .yellow),
    ]

    /// The split a scene belongs to.
    public static func of(_ scene: Scene) -> Split {
        heldOutPairs.contains { $0.shape == scene.shape && $0.colour == scene.colour } ? .heldOut : .train
    }

    /// The (shape, colour) pairs of this split, in a fixed order.
    public var pairs: [(shape: Shape, colour: NamedColour)] {
        Shape.allCases.flatMap { shape in NamedColour.allCases.map { (shape: shape, colour: $0) } }.filter { pair in
            let held = Split.heldOutPairs.contains { $0.shape == pair.shape && $0.colour == pair.colour }
            return held == (self == .heldOut)
        }
    }

    /// Every scene of the split, in `Scene.all`'s order.
    public var scenes: [Scene] { Scene.all.filter { Split.of($0) == self } }

    public func contains(_ scene: Scene) -> Bool { Split.of(scene) == self }
}

extension RandomNumberGenerator {
    /// A value in 0..<n from one `next()` (the multiply-high reduction; the bias is below 2⁻⁵⁰ for our n).
    mutating func below(_ n: Int) -> Int {
        precondition(n > 0)
        return Int(next().multipliedFullWidth(by: UInt64(n)).high)
    }

    /// A value in [0, 1) with 53 random bits.
    mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// A standard normal value (Box–Muller, one of the pair).
    mutating func gaussian() -> Double {
        let u = 1 - unit()  // (0, 1]
        let v = unit()
        return (-2 * log(u)).squareRoot() * cos(2 * Double.pi * v)
    }
}
