import Foundation
import Torch

/// Renders scenes to 32×32 RGB images. Each pixel is supersampled on a 4×4 grid, so edges are anti-aliased with 17
/// coverage levels; the pixel is the background blended with the shape's colour by its coverage, rounded. Pixels
/// inside the shape are exactly the shape's colour, pixels outside exactly the background's.
///
/// Geometry (pixel coordinates, x right, y down, the image spans 0...32): every shape's bounding box is the square of
/// half-side `size.radius` (4 or 7) centred on `position.centre`. The circle is inscribed in it, the square is it,
/// the triangle has its base on the box's bottom edge and its apex at the middle of the top edge.
public enum Renderer {
    public static let side = 32
    static let subsamples = 4

    /// The scene as [32, 32, 3] (HWC, row-major) bytes.
    public static func render(_ scene: Scene) -> [UInt8] {
        let (cx, cy) = scene.position.centre
        let r = scene.size.radius
        let fg = scene.colour.rgb, bg = scene.background.rgb
        let n = subsamples, total = n * n
        var out = [UInt8](repeating: 0, count: side * side * 3)
        for y in 0..<side {
            for x in 0..<side {
                var covered = 0
                for sy in 0..<n {
                    for sx in 0..<n {
                        let px = Double(x) + (Double(sx) + 0.5) / Double(n)
                        let py = Double(y) + (Double(sy) + 0.5) / Double(n)
                        if inside(scene.shape, px - cx, py - cy, r) { covered += 1 }
                    }
                }
                let i = (y * side + x) * 3
                out[i] = blend(bg.r, fg.r, covered, total)
                out[i + 1] = blend(bg.g, fg.g, covered, total)
                out[i + 2] = blend(bg.b, fg.b, covered, total)
            }
        }
        return out
    }

    /// Whether the point (dx, dy) from the box's centre is inside the shape of half-side r.
    static func inside(_ shape: Shape, _ dx: Double, _ dy: Double, _ r: Double) -> Bool {
        switch shape {
        case .circle: return dx * dx + dy * dy <= r * r
        case .square: return abs(dx) <= r && abs(dy) <= r
        case .triangle: return dy <= r && abs(dx) <= (dy + r) / 2  // apex (0, -r), base from (-r, r) to (r, r)
        }
    }

    static func blend(_ a: UInt8, _ b: UInt8, _ k: Int, _ n: Int) -> UInt8 {
        UInt8((Int(a) * (n - k) + Int(b) * k + n / 2) / n)
    }

    /// Scenes as one float tensor [B, 3, 32, 32] with values in [0, 1] (byte / 255), on the CPU.
    public static func renderTensor(_ scenes: [Scene]) -> Tensor {
        tensor(scenes.map(render))
    }

    /// HWC byte images (32×32×3 each) as a float tensor [B, 3, 32, 32] in [0, 1].
    public static func tensor(_ images: [[UInt8]]) -> Tensor {
        let plane = side * side
        var values = [Float](repeating: 0, count: images.count * 3 * plane)
        for (b, image) in images.enumerated() {
            precondition(image.count == plane * 3, "Renderer.tensor: \(image.count) bytes, expected \(plane * 3)")
            for p in 0..<plane {
                for c in 0..<3 { values[(b * 3 + c) * plane + p] = Float(image[p * 3 + c]) / 255 }
            }
        }
        return Tensor(values, shape: [images.count, 3, side, side])
    }

    /// The HWC bytes of one image given as a float tensor [3, 32, 32] (or [1, 3, 32, 32]) in [0, 1]; values are
    /// clamped and rounded.
    public static func pixels(_ image: Tensor) -> [UInt8] {
        let shape = image.shape
        precondition(shape.suffix(3) == [3, side, side] && shape.dropLast(3).allSatisfy { $0 == 1 },
                     "Renderer.pixels: expected [3, 32, 32], got \(shape)")
        let values = image.toArray(Float.self)
        let plane = side * side
        var out = [UInt8](repeating: 0, count: plane * 3)
        for p in 0..<plane {
            for c in 0..<3 {
                let v = values[c * plane + p]
                out[p * 3 + c] = UInt8((min(max(v.isNaN ? 0 : v, 0), 1) * 255).rounded())
            }
        }
        return out
    }

    /// A contact sheet: the images (32×32 HWC each) in a grid of `columns`, each scaled by `scale` (nearest), with a
    /// `gap`-pixel grey gutter. Returns HWC bytes and the sheet's size.
    public static func contactSheet(_ images: [[UInt8]], columns: Int, scale: Int = 4, gap: Int = 2)
        -> (pixels: [UInt8], width: Int, height: Int)
    {
        let rows = max(1, (images.count + columns - 1) / columns)
        let cell = side * scale
        let width = columns * cell + (columns + 1) * gap, height = rows * cell + (rows + 1) * gap
        var out = [UInt8](repeating: 128, count: width * height * 3)
        for (k, image) in images.enumerated() {
            let ox = gap + (k % columns) * (cell + gap), oy = gap + (k / columns) * (cell + gap)
            for y in 0..<cell {
                for x in 0..<cell {
                    let s = ((y / scale) * side + x / scale) * 3, d = ((oy + y) * width + ox + x) * 3
                    out[d] = image[s]
                    out[d + 1] = image[s + 1]
                    out[d + 2] = image[s + 2]
                }
            }
        }
        return (out, width, height)
    }
}

/// An image degradation, to make worse images for the aesthetic head to learn from. `strength` runs from 0 (no
/// change) to 1; the random parts (the noise, the tint) come from `seed`, so the same degradation gives the same bytes.
///   blur         Gaussian blur, σ = 2·strength pixels (edges clamped)
///   noise        Gaussian noise, σ = 40·strength (in 0...255 units) per channel, clipped
///   lowContrast  every pixel pulled towards mid grey 128 by 0.8·strength
///   colourShift  every pixel pulled towards an off-palette tint (one of four, chosen by the seed) by 0.3·strength;
///                the move stays under 107, so colours stay nearest to their own named colour
public struct Degradation: Hashable, Sendable, Codable, CustomStringConvertible {
    public enum Kind: String, CaseIterable, Sendable, Hashable, Codable {
        case blur, noise, lowContrast = "low-contrast", colourShift = "colour-shift"
    }

    public var kind: Kind
    public var strength: Double
    public var seed: UInt64

    public init(_ kind: Kind, strength: Double, seed: UInt64 = 0) {
        precondition((0...1).contains(strength), "Degradation: strength \(strength) is outside 0...1")
        self.kind = kind
        self.strength = strength
        self.seed = seed
    }

    /// A random kind and strength (uniform in [0.2, 1]) and a seed, from `generator`.
    public static func random(using generator: inout some RandomNumberGenerator) -> Degradation {
        random(kinds: Kind.allCases, minimumStrength: 0.2, using: &generator)
    }

    /// A kind drawn uniformly from `kinds`, a strength uniform in [minimumStrength, 1], and a seed.
    public static func random(kinds: [Kind], minimumStrength: Double, using generator: inout some RandomNumberGenerator)
        -> Degradation
    {
        precondition(!kinds.isEmpty && (0...1).contains(minimumStrength))
        let kind = kinds[generator.below(kinds.count)]
        return Degradation(kind, strength: minimumStrength + (1 - minimumStrength) * generator.unit(), seed: generator.next())
    }

    static let tints: [SIMD3<Double>] = [[200, 120, 40], [120, 60, 160], [60, 160, 140], [150, 150, 90]]

    /// The degraded copy of an HWC image of `width`×`height` (32×32 by default).
    public func apply(to image: [UInt8], width: Int = Renderer.side, height: Int = Renderer.side) -> [UInt8] {
        precondition(image.count == width * height * 3, "Degradation.apply: \(image.count) bytes for \(width)x\(height)x3")
        if strength == 0 { return image }
        var values = image.map(Double.init)
        var rng = SplitMix64(seed: seed)
        switch kind {
        case .blur:
            values = Self.gaussianBlur(values, width: width, height: height, sigma: 2 * strength)
        case .noise:
            for i in values.indices { values[i] += 40 * strength * rng.gaussian() }
        case .lowContrast:
            let a = 0.8 * strength
            for i in values.indices { values[i] += a * (128 - values[i]) }
        case .colourShift:
            let tint = Self.tints[rng.below(Self.tints.count)], a = 0.3 * strength
            for p in 0..<(width * height) {
                for c in 0..<3 { values[p * 3 + c] += a * (tint[c] - values[p * 3 + c]) }
            }
        }
        return values.map { UInt8(min(max($0, 0), 255).rounded()) }
    }

    /// Applies the degradations in order.
    public static func apply(_ degradations: [Degradation], to image: [UInt8]) -> [UInt8] {
        degradations.reduce(image) { $1.apply(to: $0) }
    }

    /// A separable Gaussian blur of HWC values, edges clamped.
    static func gaussianBlur(_ values: [Double], width: Int, height: Int, sigma: Double) -> [Double] {
        let radius = Int((3 * sigma).rounded(.up))
        var kernel = (-radius...radius).map { exp(-Double($0 * $0) / (2 * sigma * sigma)) }
        let sum = kernel.reduce(0, +)
        kernel = kernel.map { $0 / sum }
        var tmp = values, out = values
        for y in 0..<height {
            for x in 0..<width {
                for c in 0..<3 {
                    var s = 0.0
                    for (k, w) in kernel.enumerated() {
                        let xx = min(max(x + k - radius, 0), width - 1)
                        s += w * values[(y * width + xx) * 3 + c]
                    }
                    tmp[(y * width + x) * 3 + c] = s
                }
            }
        }
        for y in 0..<height {
            for x in 0..<width {
                for c in 0..<3 {
                    var s = 0.0
                    for (k, w) in kernel.enumerated() {
                        let yy = min(max(y + k - radius, 0), height - 1)
                        s += w * tmp[(yy * width + x) * 3 + c]
                    }
                    out[(y * width + x) * 3 + c] = s
                }
            }
        }
        return out
    }

    public var description: String { "\(kind.rawValue) \(String(format: "%.2f", strength))" }
}
