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

    @Test func imageFilesAreListedByName() throws {
        let names = try ImageIO.imageFiles(in: imagesURL).map(\.lastPathComponent)
        #expect(names == ["grey.png", "not-an-image.png", "palette.png", "rgb.jpg", "rgb.png", "rgba.png", "truncated.jpg", "truncated.png"])
    }
}
