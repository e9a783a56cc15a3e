import Foundation
import Testing
import Torch

@testable import Rewards

let imagesURL = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("images")

/// Pixels Pillow decoded, [H][W][3] 8-bit, from scripts/parity/make_image_fixtures.py.
func pillowPixels(_ name: String) throws -> [UInt8] {
    let json = try JSONSerialization.jsonObject(with: Data(contentsOf: imagesURL.appendingPathComponent("expected.json")))
    let rows = (json as! [String: Any])[name] as! [[[Int]]]
    return rows.flatMap { $0.flatMap { $0.map(UInt8.init) } }
}

/// A [3, H, W] image in [0, 1] back to [H, W, 3] bytes.
func bytes(_ image: Tensor) -> [UInt8] {
    (image * 255).round().permute([1, 2, 0]).to(.uint8).toArray(UInt8.self)
}

@Suite struct ImageIOTests {
    @Test(arguments: [("rgb.png", "rgb"), ("grey.png", "grey"), ("palette.png", "palette"), ("rgb.jpg", "jpg")])
    func decodesLikePillow(file: String, expected: String) throws {
        let image = try ImageIO.read(imagesURL.appendingPathComponent(file))
        #expect(image.shape == [3, 6, 10])
        #expect(image.dtype == .float32)
        #expect(image.min().item() >= 0 && image.max().item() <= 1)
        #expect(bytes(image) == (try pillowPixels(expected)))
    }

    @Test func alphaIsDroppedNotMixedIn() throws {
        // rgba.png is rgb.png with alpha 128: Pillow's convert("RGB") keeps the colours as they are.
        let image = try ImageIO.read(imagesURL.appendingPathComponent("rgba.png"))
        #expect(bytes(image) == (try pillowPixels("rgb")))
    }

    @Test(arguments: [
        ("not-an-image.png", "not a PNG or JPEG image"),
        ("truncated.png", "cannot decode the image: "),
        ("truncated.jpg", "cannot decode the image: Premature end of JPEG file"),
        ("missing.png", "cannot read the file"),
    ])
    func badFilesNameTheFile(file: String, message: String) throws {
        let url = imagesURL.appendingPathComponent(file)
        do {
            _ = try ImageIO.read(url)
            Issue.record("\(file) was read")
        } catch let error as RewardError {
            guard case .invalidImage(let path, let text) = error else { Issue.record("\(error)"); return }
            #expect(path == url.path)
            #expect(text.hasPrefix(message), "\(text)")
        }
    }

    /// A PNG whose header claims width x height: IHDR, a tiny IDAT and IEND with their CRCs, a few dozen bytes.
    static func pngHeader(width: UInt32, height: UInt32) -> Data {
        func crc32(_ bytes: [UInt8]) -> UInt32 {
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                crc ^= UInt32(byte)
                for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1 }
            }
            return ~crc
        }
        func bigEndian(_ value: UInt32) -> [UInt8] { [24, 16, 8, 0].map { UInt8((value >> $0) & 0xFF) } }
        func chunk(_ type: String, _ body: [UInt8]) -> [UInt8] {
            let typed = Array(type.utf8) + body
            return bigEndian(UInt32(body.count)) + typed + bigEndian(crc32(typed))
        }
        let ihdr = bigEndian(width) + bigEndian(height) + [8, 2, 0, 0, 0]  // 8-bit RGB
        let idat: [UInt8] = [0x78, 0x9C, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]  // zlib of one zero byte
        return Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", ihdr) + chunk("IDAT", idat) + chunk("IEND", []))
    }

    /// A baseline JPEG whose frame header claims width x height, with no image data behind it.
    static func jpegHeader(width: UInt16, height: UInt16) -> Data {
        func bigEndian(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
        let sof: [UInt8] = [0xFF, 0xC0, 0x00, 17, 8] + bigEndian(height) + bigEndian(width) + [3, 1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0]
        let sos: [UInt8] = [0xFF, 0xDA, 0x00, 12, 3, 1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0]
        return Data([0xFF, 0xD8] + sof + sos + [0x00, 0x00, 0xFF, 0xD9])
    }

    @Test(arguments: [("huge.png", "8193x8192 (67117056 pixels)"), ("huge.png", "100000x100000 (10000000000 pixels)"),
                      ("huge.png", "12000x12000 (144000000 pixels)"), ("huge.jpg", "40000x40000 (1600000000 pixels)"),
                      ("huge.jpg", "65000x1033 (67145000 pixels)")])
    func imagesAboveTheLimitAreRefusedFromTheHeader(file: String, size: String) throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("imageio-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let url = folder.appendingPathComponent(file)
        let dimensions = size.split(separator: " ")[0].split(separator: "x").map { Int($0)! }
        let data = file.hasSuffix(".png")
            ? Self.pngHeader(width: UInt32(dimensions[0]), height: UInt32(dimensions[1]))
            : Self.jpegHeader(width: UInt16(dimensions[0]), height: UInt16(dimensions[1]))
        #expect(data.count < 100)
        try data.write(to: url)
        do {
            _ = try ImageIO.read(url)
            Issue.record("\(file) was read")
        } catch let error as RewardError {
            let text = error.description
            #expect(text == "\(url.path): the image is \(size), above the limit of 67108864 pixels")
        }
    }

    @Test func imageFilesAreListedByName() throws {
        let names = try ImageIO.imageFiles(in: imagesURL).map(\.lastPathComponent)
        #expect(names == ["grey.png", "not-an-image.png", "palette.png", "rgb.jpg", "rgb.png", "rgba.png", "truncated.jpg", "truncated.png"])
    }
}
