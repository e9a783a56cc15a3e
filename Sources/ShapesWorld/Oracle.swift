import Foundation
import Torch

/// What the oracle reads off an image. The shape's attributes are nil when it finds no shape (a plain image).
public struct Reading: Hashable, Sendable, CustomStringConvertible {
    public var background: NamedColour
    public var colour: NamedColour?
    public var shape: Shape?
    public var size: Size?
    public var position: Position?

    public var attributes: PromptAttributes {
        PromptAttributes(shape: shape, colour: colour, size: size, position: position, background: background)
    }

    public var description: String { attributes.description }
}

/// The four parts of the quality score, each in [0, 1] (1: as clean as a render).
public struct QualityTerms: Hashable, Sendable {
    /// Colour distance between shape and background over 215 (the closest two named colours), capped at 1.
    public var contrast: Double
    /// exp(-d/60), d the mean distance of the measured shape and background colours to their nearest named colour:
    /// the named colours are the saturated corners of the RGB cube, so washed-out or tinted colours score lower.
    public var saturation: Double
    /// 1 / (1 + (w/3)²), w the width in pixels of the shape's edge (Σ 4α(1−α) / Σ |∇α| near the boundary; about
    /// 0.7 for an anti-aliased render, 2.26σ after a Gaussian blur of σ).
    public var sharpness: Double
    /// exp(-n/20), n the RMS deviation (0...255 units) of the pixels at least 3 pixels from the edge from their
    /// region's median colour.
    public var cleanliness: Double

    /// 1 + 9 × the product of the terms: 10 for a clean render with straight edges.
    public var score: Double { 1 + 9 * contrast * saturation * sharpness * cleanliness }
}

/// Reads scenes back from pixels (not differentiable). Images are 32×32 HWC bytes, or [3, 32, 32] float tensors in
/// [0, 1] (`Renderer.pixels`).
///
/// Background: the named colour most border pixels are nearest to; its measured value is the median of those
/// pixels. Shape colour: the median of the pixels farthest from the background (at least 3/4 of the 6th-largest
/// distance), named by nearest. Coverage α of each pixel: its projection onto the line from background to shape
/// colour. Shape mask: the largest 4-connected region of α > 0.5 (so specks of noise do not count). Size: the mask's
/// bounding box is at most 11 pixels on its longer side (small, 8) or more (large, 14). Position: the named
/// position nearest to the box's centre. Shape: a triangle holds less than 0.65 as much coverage in the upper half
/// of its box as in the lower (about 1/3; circles and squares 1); otherwise a square fills more than 0.89 of its box
/// (1; a circle π/4).
public enum Oracle {
    static let side = Renderer.side

    /// Everything the oracle needs from an image, measured once.
    struct Analysis {
        var background: NamedColour
        var bgValue: SIMD3<Double>
        var fgValue: SIMD3<Double>?
        var alpha: [Double]  // coverage per pixel, clamped to [0, 1]
        var mask: [Bool]  // the largest region of α > 0.5
        var box: (x0: Int, y0: Int, x1: Int, y1: Int)?  // inclusive
    }

    public static func read(_ image: Tensor) -> Reading { read(Renderer.pixels(image)) }

    public static func read(_ pixels: [UInt8]) -> Reading {
        let a = analyse(pixels)
        var reading = Reading(background: a.background)
        guard let fg = a.fgValue, let box = a.box else { return reading }
        reading.colour = NamedColour.nearest(to: fg).colour
        let w = box.x1 - box.x0 + 1, h = box.y1 - box.y0 + 1
        reading.size = max(w, h) <= 11 ? .small : .large
        let cx = Double(box.x0 + box.x1 + 1) / 2, cy = Double(box.y0 + box.y1 + 1) / 2
        reading.position = Position.allCases.min { p, q in
            let (a, b) = (p.centre, q.centre)
            return (a.x - cx) * (a.x - cx) + (a.y - cy) * (a.y - cy) < (b.x - cx) * (b.x - cx) + (b.y - cy) * (b.y - cy)
        }
        // Coverage inside the box grown by one pixel (to keep the anti-aliased rim), split at the box's middle row.
        var upper = 0.0, lower = 0.0, total = 0.0
        let mid = Double(box.y0 + box.y1 + 1) / 2
        for y in max(box.y0 - 1, 0)...min(box.y1 + 1, side - 1) {
            for x in max(box.x0 - 1, 0)...min(box.x1 + 1, side - 1) {
                let m = a.alpha[y * side + x]
                total += m
                let top = min(max(mid - Double(y), 0), 1)  // the part of the pixel row above the middle line
                upper += m * top
                lower += m * (1 - top)
            }
        }
        if upper < 0.65 * lower {
            reading.shape = .triangle
        } else {
            reading.shape = total / Double(w * h) > 0.89 ? .square : .circle
        }
        return reading
    }

    static func analyse(_ pixels: [UInt8]) -> Analysis {
        precondition(pixels.count == side * side * 3, "Oracle: \(pixels.count) bytes, expected 32x32x3")
        let values = (0..<(side * side)).map {
            SIMD3(Double(pixels[$0 * 3]), Double(pixels[$0 * 3 + 1]), Double(pixels[$0 * 3 + 2]))
        }
        // Background: a vote of the border pixels.
        var border: [Int] = []
        for i in 0..<side {
            let last = side - 1
            border += [i, last * side + i, i * side, i * side + last]
        }
        var votes = [NamedColour: [Int]]()
        for p in border { votes[NamedColour.nearest(to: values[p]).colour, default: []].append(p) }
        let (background, voters) = votes.max { ($0.value.count, $1.key.index) < ($1.value.count, $0.key.index) }!
        let bgValue = median(voters.map { values[$0] })

        var analysis = Analysis(background: background, bgValue: bgValue, fgValue: nil,
                                alpha: [Double](repeating: 0, count: side * side),
                                mask: [Bool](repeating: false, count: side * side), box: nil)
        let distances = values.map { d in let v = d - bgValue; return (v * v).sum().squareRoot() }
        let reference = distances.sorted(by: >)[5]
        guard reference >= 30 else { return analysis }
        let fgValue = median(values.indices.filter { distances[$0] >= 0.75 * reference }.map { values[$0] })
        let axis = fgValue - bgValue
        let norm = (axis * axis).sum()
        analysis.fgValue = fgValue
        analysis.alpha = values.map { min(max(((($0 - bgValue) * axis).sum()) / norm, 0), 1) }
        analysis.mask = largestRegion(analysis.alpha.map { $0 > 0.5 })
        var box: (x0: Int, y0: Int, x1: Int, y1: Int)?
        for y in 0..<side {
            for x in 0..<side where analysis.mask[y * side + x] {
                box = box.map { (min($0.x0, x), min($0.y0, y), max($0.x1, x), max($0.y1, y)) } ?? (x, y, x, y)
            }
        }
        analysis.box = box
        return analysis
    }

    /// The largest 4-connected region of `mask` (the first found on ties).
    static func largestRegion(_ mask: [Bool]) -> [Bool] {
        var label = [Int](repeating: -1, count: mask.count)
        var best: [Int] = []
        for start in mask.indices where mask[start] && label[start] < 0 {
            var region = [start], k = 0
            label[start] = start
            while k < region.count {
                let p = region[k]
                k += 1
                let (x, y) = (p % side, p / side)
                for (nx, ny) in [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
                where nx >= 0 && ny >= 0 && nx < side && ny < side {
                    let q = ny * side + nx
                    if mask[q] && label[q] < 0 { label[q] = start; region.append(q) }
                }
            }
            if region.count > best.count { best = region }
        }
        var out = [Bool](repeating: false, count: mask.count)
        for p in best { out[p] = true }
        return out
    }

    static func median(_ values: [SIMD3<Double>]) -> SIMD3<Double> {
        func m(_ c: Int) -> Double {
            let s = values.map { $0[c] }.sorted()
            return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
        }
        return SIMD3(m(0), m(1), m(2))
    }

    // MARK: alignment

    /// The fraction of the prompt's stated attributes that the image shows (1 when the prompt states none).
    public static func alignment(_ pixels: [UInt8], _ prompt: PromptAttributes) -> Double {
        prompt.count == 0 ? 1 : Double(prompt.matches(read(pixels).attributes)) / Double(prompt.count)
    }

    /// `alignment` of a caption of the grammar (`Captions.parse`).
    public static func alignment(_ pixels: [UInt8], prompt: String) -> Double {
        alignment(pixels, Captions.parse(prompt))
    }

    /// `alignment` of a [3, 32, 32] float image.
    public static func alignment(_ image: Tensor, prompt: String) -> Double {
        alignment(Renderer.pixels(image), prompt: prompt)
    }

    // MARK: quality

    /// A procedural quality score in [1, 10]: 10 for a clean render with straight edges, about 9.5 for curved or
    /// slanted ones, lower the blurrier, noisier, greyer or more tinted the image is. 1 for a plain image.
    public static func quality(_ pixels: [UInt8]) -> Double { qualityTerms(pixels).score }

    public static func quality(_ image: Tensor) -> Double { quality(Renderer.pixels(image)) }

    public static func qualityTerms(_ pixels: [UInt8]) -> QualityTerms {
        let a = analyse(pixels)
        guard let fg = a.fgValue, a.box != nil else { return QualityTerms(contrast: 0, saturation: 0, sharpness: 0, cleanliness: 0) }
        let bg = a.bgValue
        let gap = fg - bg
        let contrast = min((gap * gap).sum().squareRoot() / 215, 1)
        let offPalette = (NamedColour.nearest(to: fg).distance + NamedColour.nearest(to: bg).distance) / 2
        let saturation = exp(-offPalette / 60)

        // Distance (Chebyshev, in pixels) of every pixel from the mask's boundary.
        let edge = (0..<(side * side)).filter { p in
            let (x, y) = (p % side, p / side)
            let neighbours: [(Int, Int)] = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
            return neighbours.contains { (nx: Int, ny: Int) -> Bool in
                let within = nx >= 0 && ny >= 0 && nx < side && ny < side
                return within && a.mask[ny * side + nx] != a.mask[p]
            }
        }
        var distance = [Int](repeating: Int.max, count: side * side)
        for p in 0..<(side * side) {
            let (x, y) = (p % side, p / side)
            for e in edge { distance[p] = min(distance[p], max(abs(e % side - x), abs(e / side - y))) }
        }

        // Edge width near the boundary.
        var spread = 0.0, variation = 0.0
        for y in 0..<side {
            for x in 0..<side where distance[y * side + x] <= 4 {
                let m = a.alpha[y * side + x]
                spread += 4 * m * (1 - m)
                let dx = x + 1 < side ? a.alpha[y * side + x + 1] - m : 0
                let dy = y + 1 < side ? a.alpha[(y + 1) * side + x] - m : 0
                variation += (dx * dx + dy * dy).squareRoot()
            }
        }
        let width = variation > 0 ? spread / variation : 0
        let sharpness = 1 / (1 + (width / 3) * (width / 3))

        // Noise: deviation from the region's median, away from the edge.
        let values = (0..<(side * side)).map {
            SIMD3(Double(pixels[$0 * 3]), Double(pixels[$0 * 3 + 1]), Double(pixels[$0 * 3 + 2]))
        }
        var squares = 0.0, count = 0
        for inside in [false, true] {
            let flat = values.indices.filter { a.mask[$0] == inside && distance[$0] >= 3 }
            guard !flat.isEmpty else { continue }
            let centre = median(flat.map { values[$0] })
            for p in flat {
                let d = values[p] - centre
                squares += (d * d).sum() / 3
                count += 1
            }
        }
        let noise = count > 0 ? (squares / Double(count)).squareRoot() : 0
        return QualityTerms(contrast: contrast, saturation: saturation, sharpness: sharpness, cleanliness: exp(-noise / 20))
    }
}

extension NamedColour {
    var index: Int { Self.allCases.firstIndex(of: self)! }
}
