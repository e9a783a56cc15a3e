import Foundation
import StableDiffusion
import Testing
import Torch

@testable import Rewards

/// What scripts/parity/make_pil_fixtures.py wrote under Fixtures/pil: image files, and for each reward the uint8
/// pixels its published tool resized and cropped them to (Pillow) and the tool's scores with the tiny fixture models.
enum PILFixtures {
    static let root = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("pil")
    static let manifest: (files: [String], prompts: [String: String]) = {
        let data = try! Data(contentsOf: root.appendingPathComponent("expected.json"))
        let json = try! JSONSerialization.jsonObject(with: data) as! [String: Any]
        return (json["files"] as! [String], json["prompts"] as! [String: String])
    }()

    static func expected(_ name: String) throws -> Tensor {
        try SafeTensorsFile(url: root.appendingPathComponent("expected.safetensors")).tensor(name)
    }

    static func image(_ file: String) throws -> RGB8Image { try ImageIO.readRGB8(root.appendingPathComponent(file)) }

    /// Every reward, built from the other fixtures' tiny models.
    static func rewards() throws -> [any Reward] {
        [
            try AestheticReward(clipFolder: HFFixtures.clip, weights: HFFixtures.aesthetic),
            try PickScoreReward(folder: HFFixtures.pickscore),
            try CLIPScoreReward(folder: HFFixtures.clip),
            HPSv2Reward(model: try OpenCLIPFixtures.tiny()),
            try Aesthetic25Reward(siglipFolder: SiglipFixtures.vision, headFile: SiglipFixtures.root.appendingPathComponent("aesthetic_predictor_v2_5.pth")),
            try ImageRewardFixtures.reward(.training),
        ]
    }
}

@Suite struct PILResizeTests {
    typealias F = PILFixtures

    /// The bytes each reward's processor makes of each file (decoding, Pillow's bicubic resample in both passes,
    /// the crop) are Pillow's, for downscaling, upscaling, one-axis and same-size cases, PNG (RGB and grey) and JPEG.
    @Test func resizedPixelsAreIdenticalToPillows() throws {
        var compared = 0
        for reward in try F.rewards() {
            let processor = reward.fileProcessor
            for file in F.manifest.files {
                let ours = processor(try F.image(file))
                let theirs = try F.expected("\(reward.name).\(file)")
                #expect(theirs.shape == [processor.size, processor.size, 3])
                #expect((ours.width, ours.height) == (processor.size, processor.size))
                let expected = theirs.contiguous().toArray(UInt8.self)
                let differing = zip(ours.pixels, expected).filter { $0 != $1 }.count
                #expect(differing == 0, "\(reward.name) \(file) (\(processor)): \(differing) of \(expected.count) bytes differ")
                compared += 1
            }
        }
        #expect(compared == 6 * F.manifest.files.count)
    }

    /// Scores of the files equal the tools' (open_clip, transformers' processors, the image-reward package).
    @Test func fileScoresMatchThePublishedTools() throws {
        var worst = 0.0
        for reward in try F.rewards() {
            let images = try F.manifest.files.map { try F.image($0) }
            let scores = try withNoGrad { try reward.score(files: images, prompts: [F.manifest.prompts[reward.name]!]) }
                .to(.float64).toArray(Double.self)
            let expected = try F.expected("\(reward.name).scores").toArray(Double.self)
            #expect(scores.count == expected.count)
            for (file, (a, b)) in zip(F.manifest.files, zip(scores, expected)) {
                let error = abs(a - b) / abs(b)
                worst = max(worst, error)
                #expect(error < 1e-5, "\(reward.name) \(file): \(a) vs \(b), relative error \(error)")
            }
            #expect(reward.preprocessing == .training, "score(files:) leaves the reward's mode as it was")
        }
        print("PIL path: largest relative error of a file's score against the published tools: \(worst)")
    }

    /// The weighted sum over files: each reward with its own processor; rewards sharing one share the batch.
    @Test func weightedRewardScoresFiles() throws {
        let rewards = try F.rewards()
        let weighted = WeightedReward()
        for (i, reward) in rewards.enumerated() { weighted.add(reward, gamma: Double(i + 1) / 2) }
        let files = Array(F.manifest.files.prefix(3))
        let images = try files.map { try F.image($0) }
        // One prompt for all: the HF one (the others' tokenizers read it too).
        let (total, terms) = try withNoGrad { try weighted.evaluate(files: images, prompts: ["a photo of a cat"]) }
        #expect(terms.map(\.name) == rewards.map(\.name))
        var sum = [Double](repeating: 0, count: files.count)
        for (term, part) in zip(weighted.terms, terms) {
            let alone = try withNoGrad { try term.reward.score(files: images, prompts: ["a photo of a cat"]) }
            #expect(OpenCLIPFixtures.relativeError(part.scores, alone) < 1e-6)
            for (k, s) in part.scores.toArray(Double.self).enumerated() { sum[k] += term.gamma * term.scale * s }
        }
        let totals = total.toArray(Double.self)
        for k in files.indices { #expect(abs(totals[k] - sum[k]) <= 1e-5 * max(1, abs(sum[k]))) }
    }

    /// Pillow alone: a 40x37 noise crop resized to sizes on every side of the pass-order rule (ties included), up,
    /// down and mixed, with the bicubic, bilinear and box filters: identical bytes.
    @Test func resampleMatchesPillowByteForByte() throws {
        let source = try F.expected("resample.source")
        let image = RGB8Image(width: source.size(1), height: source.size(0), pixels: source.contiguous().toArray(UInt8.self))
        let cases = [(20, 5), (39, 10), (35, 27), (36, 26), (36, 27), (60, 20), (20, 60), (60, 50), (13, 36), (40, 20), (7, 37), (1, 1)]
        for (w, h) in cases {
            for filter in PILFilter.allCases {
                let expected = try F.expected("resample.\(filter.rawValue).\(w)x\(h)").contiguous().toArray(UInt8.self)
                let ours = PILResample.resize(image, width: w, height: h, filter: filter)
                let differing = zip(ours.pixels, expected).filter { $0 != $1 }.count
                #expect(ours.pixels.count == expected.count && differing == 0, "\(filter) \(w)x\(h): \(differing) bytes differ")
            }
        }
        #expect(PILResample.verticalFirst(image, width: 36, height: 26))   // 2 x 4 < 11
        #expect(!PILResample.verticalFirst(image, width: 35, height: 27))  // 2 x 5 = 10: a tie goes horizontal first
    }

    /// Pillow's special cases: the same size is a copy; one unchanged axis is not resampled; constant images stay
    /// constant (weights sum to one in fixed point, rounding included); the processors' geometry.
    @Test func resampleEdgeCases() {
        let pixels = (0..<(7 * 5 * 3)).map { UInt8(($0 * 37) % 256) }
        let image = RGB8Image(width: 7, height: 5, pixels: pixels)
        #expect(PILResample.resize(image, width: 7, height: 5) == image)
        let constant = RGB8Image(width: 13, height: 9, pixels: [UInt8](repeating: 201, count: 13 * 9 * 3))
        for (w, h) in [(4, 3), (29, 17), (13, 4), (5, 9), (1, 1)] {
            let resized = PILResample.resize(constant, width: w, height: h)
            #expect(resized.pixels == [UInt8](repeating: 201, count: w * h * 3), "\(w)x\(h)")
        }
        // Upscaling a single column keeps each row's value: only the horizontal pass runs, with one tap per pixel.
        let column = RGB8Image(width: 1, height: 5, pixels: pixels.prefix(15).map { $0 })
        let wide = PILResample.resize(column, width: 3, height: 5)
        for y in 0..<5 { for x in 0..<3 { #expect(Array(wide.pixels[(y * 3 + x) * 3..<(y * 3 + x + 1) * 3]) == Array(pixels[y * 3..<y * 3 + 3])) } }
        // Geometry: 77x48 to 32 is 51x32, cropped at 10 (torchvision: round(9.5) to even) or 9 (transformers).
        let noise = RGB8Image(width: 77, height: 48, pixels: (0..<(77 * 48 * 3)).map { UInt8(($0 * 7919) % 251) })
        let resized = PILResample.resize(noise, width: 51, height: 32)
        #expect(PublishedImageProcessor.torchvision(size: 32)(noise) == resized.cropped(top: 0, left: 10, height: 32, width: 32))
        #expect(PublishedImageProcessor.transformersCLIP(size: 32)(noise) == resized.cropped(top: 0, left: 9, height: 32, width: 32))
        #expect(PublishedImageProcessor.siglip(size: 32)(noise) == PILResample.resize(noise, width: 32, height: 32))
    }
}

