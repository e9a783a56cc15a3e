import Foundation
import Torch

/// An 8-bit RGB image as decoded from a file: rows top to bottom, each pixel's R, G, B next to each other.
public struct RGB8Image: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// height × width × 3 bytes.
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width >= 0 && height >= 0 && pixels.count == width * height * 3, "RGB8Image: \(pixels.count) bytes for \(width)x\(height)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// The `height` × `width` rectangle whose top-left pixel is (`top`, `left`); it must lie inside the image.
    public func cropped(top: Int, left: Int, height: Int, width: Int) -> RGB8Image {
        precondition(top >= 0 && left >= 0 && top + height <= self.height && left + width <= self.width, "RGB8Image: crop outside the image")
        if (top, left, height, width) == (0, 0, self.height, self.width) { return self }
        var out = [UInt8](repeating: 0, count: height * width * 3)
        for y in 0..<height {
            let from = ((top + y) * self.width + left) * 3
            out.replaceSubrange(y * width * 3..<(y + 1) * width * 3, with: pixels[from..<from + width * 3])
        }
        return RGB8Image(width: width, height: height, pixels: out)
    }

    /// [3, H, W] float32 in [0, 1]: each byte divided by 255 in float32, as torchvision's ToTensor does.
    public func tensor() -> Tensor {
        let hwc = pixels.withUnsafeBytes { try! Tensor(bytes: $0, shape: [height, width, 3], dtype: .uint8) }
        return hwc.permute([2, 0, 1]).to(.float32) / 255
    }
}

/// The resampling filters of Pillow's `Image.resize` that the reward models' processors use.
public enum PILFilter: String, Sendable, CaseIterable {
    case box, bilinear, bicubic

    /// The filter's half-width at scale 1.
    var support: Double {
        switch self {
        case .box: 0.5
        case .bilinear: 1
        case .bicubic: 2
        }
    }

    func callAsFunction(_ x: Double) -> Double {
        switch self {
        case .box:
            return x > -0.5 && x <= 0.5 ? 1 : 0
        case .bilinear:
            let x = abs(x)
            return x < 1 ? 1 - x : 0
        case .bicubic:
            // Keys' cubic convolution with a = -0.5, written in the order Pillow evaluates it so the coefficients
            // (doubles) are the same bits.
            let a = -0.5
            let x = abs(x)
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        }
    }
}

/// Pillow's resampling of 8-bit images (`Image.resize(size, filter)` with the default `reducing_gap=None`), bit for
/// bit, written from the algorithm Pillow documents in its `Resample.c`:
/// - per axis, every output pixel reads the input pixels whose centres lie within the filter's support, widened by
///   the downscale factor (so downscaling is antialiased); the weights are normalised to sum 1, then turned into
///   fixed point with 22 fractional bits (32 bits less 8 for the value and 2 for overshoot), rounded away from 0;
/// - sums start at half a unit (so the shift rounds to nearest), are shifted right by 22 and clamped to 0…255;
/// - one pass per axis, the first into an 8-bit image the second reads: the horizontal pass first (on the rows the
///   vertical pass will read) unless `verticalFirst`; an axis whose size does not change is not resampled; the
///   same size is a copy.
public enum PILResample {
    static let precisionBits = 32 - 8 - 2

    /// One axis' taps: output i reads `count[i]` inputs from `first[i]` with weights `weights[i * taps ..< ...]`.
    struct Taps {
        let taps: Int
        var first: [Int]
        let count: [Int]
        let weights: [Int32]
    }

    static func taps(inSize: Int, outSize: Int, filter: PILFilter) -> Taps {
        // Pillow's box is (0, 0, width, height) in float32; only its extent enters, as a double.
        let scale = Double(Float(inSize) - Float(0)) / Double(outSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        let taps = Int(support.rounded(.up)) * 2 + 1
        var first = [Int](repeating: 0, count: outSize)
        var count = [Int](repeating: 0, count: outSize)
        var weights = [Int32](repeating: 0, count: outSize * taps)
        var k = [Double](repeating: 0, count: taps)
        let one = Double(1 << precisionBits)
        for i in 0..<outSize {
            let centre = 0 + (Double(i) + 0.5) * scale
            let inverse = 1 / filterScale
            // C's (int) truncates toward zero, as Int(_: Double) does.
            let lo = max(Int(centre - support + 0.5), 0)
            let n = min(Int(centre + support + 0.5), inSize) - lo
            var total = 0.0
            for x in 0..<n {
                let w = filter((Double(x + lo) - centre + 0.5) * inverse)
                k[x] = w
                total += w
            }
            for x in 0..<n where total != 0 { k[x] /= total }
            for x in 0..<taps {
                let w = x < n ? k[x] : 0
                weights[i * taps + x] = w < 0 ? Int32(-0.5 + w * one) : Int32(0.5 + w * one)
            }
            first[i] = lo
            count[i] = n
        }
        return Taps(taps: taps, first: first, count: count, weights: weights)
    }

    @inline(__always) static func clip8(_ sum: Int32) -> UInt8 {
        UInt8(clamping: sum >> Int32(precisionBits))
    }

    /// One output pixel of either pass: the `taps` RGB pixels from `start`, `stride` bytes apart, weighted by
    /// `weights[first...]` in fixed point (with Pillow's rounding half added), clipped to 8 bits at `out[o...]`.
    @inline(__always) static func convolve(
        _ input: UnsafeBufferPointer<UInt8>, from start: Int, stride: Int, taps: Int, weights: UnsafeBufferPointer<Int32>,
        at first: Int, into out: UnsafeMutableBufferPointer<UInt8>, at o: Int
    ) {
        let half = Int32(1 << (precisionBits - 1))
        var r = half, g = half, b = half
        for t in 0..<taps {
            let p = start + t * stride
            let weight = weights[first + t]
            r &+= Int32(input[p]) &* weight
            g &+= Int32(input[p + 1]) &* weight
            b &+= Int32(input[p + 2]) &* weight
        }
        out[o] = clip8(r)
        out[o + 1] = clip8(g)
        out[o + 2] = clip8(b)
    }

    /// `image` resized to `width` × `height` as Pillow's `Image.resize((width, height), filter)` does on an RGB image.
    public static func resize(_ image: RGB8Image, width: Int, height: Int, filter: PILFilter = .bicubic) -> RGB8Image {
        precondition(width > 0 && height > 0, "PILResample: output size \(width)x\(height)")
        if (width, height) == (image.width, image.height) { return image }
        let needHorizontal = width != image.width, needVertical = height != image.height
        if needHorizontal && needVertical && verticalFirst(image, width: width, height: height) {
            let columns = vertical(image, taps: taps(inSize: image.height, outSize: height, filter: filter))
            return horizontal(columns, rows: 0..<height, taps: taps(inSize: image.width, outSize: width, filter: filter))
        }
        var vertical = needVertical ? taps(inSize: image.height, outSize: height, filter: filter) : nil
        var source = image
        if needHorizontal {
            // Only the rows the vertical pass reads.
            let rows = vertical.map { $0.first[0]..<($0.first[height - 1] + $0.count[height - 1]) } ?? 0..<image.height
            source = horizontal(image, rows: rows, taps: taps(inSize: image.width, outSize: width, filter: filter))
            if vertical != nil { for i in 0..<height { vertical!.first[i] -= rows.lowerBound } }
        }
        return vertical.map { Self.vertical(source, taps: $0) } ?? source
    }

    /// Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the width
    /// (Pillow 12 and earlier always ran the horizontal pass first). The order changes the 8-bit rounding between
    /// the passes; this rule reproduced Pillow 13.0.0's choice on 1481 random size pairs.
    static func verticalFirst(_ image: RGB8Image, width: Int, height: Int) -> Bool {
        height < image.height && 2 * (image.width - width) < image.height - height
    }

    /// The horizontal pass over `rows` of `image`: an image `taps`' output wide and `rows.count` high.
    static func horizontal(_ image: RGB8Image, rows: Range<Int>, taps horizontal: Taps) -> RGB8Image {
        let width = horizontal.first.count
        var out = [UInt8](repeating: 0, count: rows.count * width * 3)
        image.pixels.withUnsafeBufferPointer { input in
            horizontal.weights.withUnsafeBufferPointer { w in
                out.withUnsafeMutableBufferPointer { output in
                    for y in 0..<rows.count {
                        let row = (y + rows.lowerBound) * image.width * 3
                        for x in 0..<width {
                            let lo = horizontal.first[x], n = horizontal.count[x], k = x * horizontal.taps
                            convolve(input, from: row + lo * 3, stride: 3, taps: n, weights: w, at: k,
                                     into: output, at: (y * width + x) * 3)
                        }
                    }
                }
            }
        }
        return RGB8Image(width: width, height: rows.count, pixels: out)
    }

    /// The vertical pass: output row y reads rows `taps.first[y]...` of `image`.
    static func vertical(_ image: RGB8Image, taps vertical: Taps) -> RGB8Image {
        let (width, height) = (image.width, vertical.first.count)
        var out = [UInt8](repeating: 0, count: height * width * 3)
        image.pixels.withUnsafeBufferPointer { input in
            vertical.weights.withUnsafeBufferPointer { w in
                out.withUnsafeMutableBufferPointer { output in
                    for y in 0..<height {
                        let lo = vertical.first[y], n = vertical.count[y], k = y * vertical.taps
                        for x in 0..<width {
                            convolve(input, from: (lo * width + x) * 3, stride: width * 3, taps: n, weights: w, at: k,
                                     into: output, at: (y * width + x) * 3)
                        }
                    }
                }
            }
        }
        return RGB8Image(width: width, height: height, pixels: out)
    }
}

/// How a reward model's published tool brings an image file to its tower, on the 8-bit image as Pillow holds it:
/// a bicubic `Image.resize`, a centre crop, then ToTensor (÷ 255) and the mean and std (the reward's own).
/// - `torchvision(size:)`: torchvision's `Resize(size, BICUBIC)` + `CenterCrop(size)` on a PIL image: open_clip's
///   and HPSv2's `preprocess_val`, OpenAI CLIP's `preprocess` (the LAION aesthetic predictor's), ImageReward's
///   `_transform`. The short side becomes `size`, the long side `int(size * long / short)`; the crop's offsets are
///   `round((extent - size) / 2)`, halves to even.
/// - `transformersCLIP(size:)`: transformers' (slow, PIL) `CLIPImageProcessor`, PickScore's and transformers CLIP
///   folders': the same resize, but the crop's offsets are `(extent - size) // 2`.
/// - `siglip(size:)`: transformers' `SiglipImageProcessor` (the Aesthetic Predictor v2.5): both sides to `size`,
///   no crop.
public struct PublishedImageProcessor: Hashable, Sendable, CustomStringConvertible {
    public enum Resize: String, Hashable, Sendable { case shortestEdge, square }
    public enum CropOffset: String, Hashable, Sendable { case roundHalfEven, floor }

    public var size: Int
    public var resize: Resize
    public var cropOffset: CropOffset
    public var filter: PILFilter

    public init(size: Int, resize: Resize, cropOffset: CropOffset, filter: PILFilter = .bicubic) {
        self.size = size
        self.resize = resize
        self.cropOffset = cropOffset
        self.filter = filter
    }

    public static func torchvision(size: Int) -> Self { Self(size: size, resize: .shortestEdge, cropOffset: .roundHalfEven) }
    public static func transformersCLIP(size: Int) -> Self { Self(size: size, resize: .shortestEdge, cropOffset: .floor) }
    public static func siglip(size: Int) -> Self { Self(size: size, resize: .square, cropOffset: .floor) }

    public var description: String {
        switch (resize, cropOffset) {
        case (.square, _): "PIL \(filter.rawValue) resize to \(size)x\(size)"
        case (_, .roundHalfEven): "PIL \(filter.rawValue) resize of the short side to \(size), torchvision centre crop"
        case (_, .floor): "PIL \(filter.rawValue) resize of the short side to \(size), transformers centre crop"
        }
    }

    /// The resized (and cropped) `size` × `size` image.
    public func callAsFunction(_ image: RGB8Image) -> RGB8Image {
        switch resize {
        case .square:
            return PILResample.resize(image, width: size, height: size, filter: filter)
        case .shortestEdge:
            let (w, h) = (image.width, image.height)
            let long = Int(Double(size) * Double(max(w, h)) / Double(min(w, h)))
            let (newW, newH) = w <= h ? (size, long) : (long, size)
            let resized = PILResample.resize(image, width: newW, height: newH, filter: filter)
            func offset(_ extent: Int) -> Int {
                switch cropOffset {
                case .roundHalfEven: Int((Double(extent - size) / 2).rounded(.toNearestOrEven))
                case .floor: (extent - size) / 2
                }
            }
            return resized.cropped(top: offset(newH), left: offset(newW), height: size, width: size)
        }
    }

    /// [B, 3, size, size] float32 in [0, 1] on `device`: each image processed, then divided by 255.
    public func tensor(_ images: [RGB8Image], device: Device = .cpu) -> Tensor {
        Tensor.stack(images.map { self($0).tensor() }).to(device)
    }
}
