import Foundation
import Torch

/// Writes 8-bit RGB images as PNG files. Self-contained: the image data goes into zlib "stored" (uncompressed)
/// deflate blocks, which every PNG reader accepts, so no codec library is needed to write what we generate.
public enum PNG {
    /// PNG bytes of an 8-bit image given as [H, W, 3] (or [H, W, 1], [H, W, 4]) uint8 values in row-major order.
    public static func encode(pixels: [UInt8], width: Int, height: Int, channels: Int = 3) -> Data {
        precondition(pixels.count == width * height * channels, "PNG.encode: \(pixels.count) bytes for \(width)x\(height)x\(channels)")
        let colorType: UInt8 = switch channels {
        case 1: 0
        case 3: 2
        case 4: 6
        default: preconditionFailure("PNG.encode: \(channels) channels")
        }
        var raw = Data(capacity: (width * channels + 1) * height)
        for row in 0..<height {
            raw.append(0)  // filter type: none
            raw.append(contentsOf: pixels[(row * width * channels)..<((row + 1) * width * channels)])
        }
        var png = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var header = Data()
        header.appendBigEndian(UInt32(width))
        header.appendBigEndian(UInt32(height))
        header.append(contentsOf: [8, colorType, 0, 0, 0])  // bit depth, colour type, compression, filter, interlace
        png.appendChunk("IHDR", header)
        png.appendChunk("IDAT", zlibStored(raw))
        png.appendChunk("IEND", Data())
        return png
    }

    /// Writes a [H, W, C] uint8 tensor (C = 1, 3 or 4) to `url`, atomically.
    public static func write(_ image: Tensor, to url: URL) throws {
        precondition(image.rank == 3 && image.dtype == .uint8, "PNG.write: expected [H, W, C] uint8, got \(image.shape) \(image.dtype)")
        let (h, w, c) = (image.size(0), image.size(1), image.size(2))
        try encode(pixels: image.toArray(UInt8.self), width: w, height: h, channels: c).write(to: url, options: .atomic)
    }

    /// A zlib stream of stored deflate blocks (at most 65535 bytes each) with its Adler-32 checksum.
    static func zlibStored(_ data: Data) -> Data {
        var out = Data([0x78, 0x01])
        var offset = 0
        repeat {
            let count = min(65535, data.count - offset)
            let last: UInt8 = offset + count >= data.count ? 1 : 0
            out.append(last)
            out.append(UInt8(count & 0xFF))
            out.append(UInt8(count >> 8))
            out.append(UInt8(~count & 0xFF))
            out.append(UInt8((~count >> 8) & 0xFF))
            out.append(data[(data.startIndex + offset)..<(data.startIndex + offset + count)])
            offset += count
        } while offset < data.count
        out.appendBigEndian(adler32(data))
        return out
    }

    static func adler32(_ data: Data) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        for chunk in stride(from: 0, to: data.count, by: 5552) {  // 5552: the longest run before the sums can overflow
            for byte in data[(data.startIndex + chunk)..<(data.startIndex + min(chunk + 5552, data.count))] {
                a += UInt32(byte)
                b += a
            }
            a %= 65521
            b %= 65521
        }
        return b << 16 | a
    }

    static let crcTable: [UInt32] = (0..<256).map { n in
        (0..<8).reduce(UInt32(n)) { c, _ in c & 1 == 1 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }

    static func crc32(_ data: Data) -> UInt32 {
        ~data.reduce(~UInt32(0)) { crcTable[Int(($0 ^ UInt32($1)) & 0xFF)] ^ ($0 >> 8) }
    }
}

extension Data {
    fileprivate mutating func appendBigEndian(_ value: UInt32) {
        append(contentsOf: [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)])
    }

    fileprivate mutating func appendChunk(_ type: String, _ body: Data) {
        appendBigEndian(UInt32(body.count))
        let typed = Data(type.utf8) + body
        append(typed)
        appendBigEndian(PNG.crc32(typed))
    }
}
