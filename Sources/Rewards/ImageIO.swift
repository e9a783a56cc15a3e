import CImageCodecs
import Foundation
import Torch

/// Reads PNG and JPEG files (by their signature, not their name) as RGB tensors in [0, 1].
public enum ImageIO {
    /// The most pixels (width × height) an image may have: 8192 × 8192. Pillow refuses above 178,956,970 (its
    /// decompression-bomb error), but a reward looks at a 224-pixel crop, and an image at Pillow's limit takes 2.1 GB
    /// as float32 before it is resized. The size is read from the header, so a small file claiming a huge image is
    /// refused before anything is decoded or allocated.
    public static let maxPixels = 8192 * 8192

    /// [3, H, W] float32 in [0, 1]. Grey, palette and 16-bit PNGs become 8-bit RGB; alpha is dropped.
    public static func read(_ url: URL) throws -> Tensor {
        // The decoder's buffer is freed before the float copy is made: the peak is one 8-bit and one float copy.
        let hwc = try decode(url) { bytes, width, height in try Tensor(bytes: bytes, shape: [height, width, 3], dtype: .uint8) }
        let (height, width) = (hwc.size(0), hwc.size(1))
        // Converted a band of rows at a time, so no second full-size float tensor exists next to the result.
        let chw = hwc.permute([2, 0, 1])
        let result = Tensor.empty([3, height, width], dtype: .float32)
        let band = max(1, (1 << 22) / max(width, 1))
        for start in stride(from: 0, to: height, by: band) {
            let end = min(start + band, height)
            result.slice(dim: 1, start: start, end: end).copy_(chw.slice(dim: 1, start: start, end: end).to(.float32) / 255)
        }
        return result
    }

    /// The 8-bit RGB pixels, as Pillow's `Image.open(file).convert("RGB")` holds them (what the reward models'
    /// published processors resize).
    public static func readRGB8(_ url: URL) throws -> RGB8Image {
        try decode(url) { bytes, width, height in RGB8Image(width: width, height: height, pixels: Array(bytes.bindMemory(to: UInt8.self))) }
    }

    /// Decodes a PNG or JPEG and hands its RGB bytes (H × W × 3), width and height to `body`; they are freed after.
    static func decode<T>(_ url: URL, _ body: (UnsafeRawBufferPointer, Int, Int) throws -> T) throws -> T {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw RewardError.invalidImage(file: url.path, message: "cannot read the file")
        }
        let png: [UInt8] = [0x89, 0x50, 0x4E, 0x47]
        let jpeg: [UInt8] = [0xFF, 0xD8, 0xFF]
        let decode: (UnsafePointer<UInt8>?, Int, UInt64, UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>?,
                     UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<Int32>?, UnsafeMutablePointer<CChar>?, Int) -> Int32
        if data.starts(with: png) {
            decode = tc_decode_png
        } else if data.starts(with: jpeg) {
            decode = tc_decode_jpeg
        } else {
            throw RewardError.invalidImage(file: url.path, message: "not a PNG or JPEG image")
        }
        var pixels: UnsafeMutablePointer<UInt8>?
        var width: Int32 = 0, height: Int32 = 0
        var message = [CChar](repeating: 0, count: 256)
        let status = data.withUnsafeBytes { bytes in
            decode(bytes.bindMemory(to: UInt8.self).baseAddress, bytes.count, UInt64(maxPixels), &pixels, &width, &height, &message, message.count)
        }
        if status == -2 {
            throw RewardError.invalidImage(file: url.path, message: "the image is \(width)x\(height) "
                + "(\(Int(width) * Int(height)) pixels), above the limit of \(maxPixels) pixels")
        }
        guard status == 0, let pixels else {
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw RewardError.invalidImage(file: url.path, message: "cannot decode the image: \(text)")
        }
        defer { tc_free(pixels) }
        return try body(UnsafeRawBufferPointer(start: pixels, count: Int(width) * Int(height) * 3), Int(width), Int(height))
    }

    /// Image files in a folder (by extension: png, jpg, jpeg), sorted by name.
    public static func imageFiles(in folder: URL) throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: folder, includingPropertiesForKeys: nil)
            .filter { ["png", "jpg", "jpeg"].contains($0.pathExtension.lowercased()) }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }
}
