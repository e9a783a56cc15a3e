import ArgumentParser
import Foundation
import ShapesWorld
import Torch
import StableDiffusion

struct Shapes: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "ShapesWorld, the embedded default world: tiny procedural scenes, their captions and an oracle.",
        subcommands: [Render.self])

    struct Render: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Render random scenes as 32x32 PNGs with captions (a folder `train --mode direct --data` reads).",
            discussion: """
                Writes 0000.png, 0001.png, ..., metadata.jsonl (one {"file_name", "text"} object per image, with the \
                scene's attributes, its split, the oracle's quality score and the degradation if any) and grid.png, a \
                contact sheet of the first 64 images scaled x4. The same --seed gives the same bytes. --split \
                held-out draws only the held-out (shape, colour) pairs, which training scenes never use. --degrade \
                blurs, adds noise, lowers the contrast or tints each image (kind and strength 0.2-1 from the seed).
                """)

        @Option(help: "The output folder (created if needed).", completion: .directory) var out: String
        @Option(help: "How many scenes.") var count = 64
        @Option(help: "The seed of the scenes, captions and degradations.") var seed: UInt64 = 0
        @Option(help: "train or held-out.") var split = "train"
        @Flag(help: "Degrade every image with a random degradation.") var degrade = false

        func run() throws {
            guard count >= 1 else { throw CommandError("--count must be at least 1 (got \(count))") }
            guard let split = Split(rawValue: split) else {
                throw CommandError("--split \(self.split): expected train or held-out")
            }
            let folder = URL(fileURLWithPath: out)
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            var rng = SplitMix64(seed: seed)
            var lines: [String] = []
            var sheet: [[UInt8]] = []
            let digits = max(4, String(count - 1).count)
            for index in 0..<count {
                let scene = Scene.random(split: split, using: &rng)
                let caption = Captions.caption(for: scene, seed: rng.next())
                var image = Renderer.render(scene)
                var degradation: Degradation?
                if degrade {
                    degradation = Degradation.random(using: &rng)
                    image = degradation!.apply(to: image)
                }
                let name = String(repeating: "0", count: max(0, digits - String(index).count)) + "\(index).png"
                try PNG.encode(pixels: image, width: Renderer.side, height: Renderer.side)
                    .write(to: folder.appendingPathComponent(name), options: .atomic)
                var entry: [String: Any] = [
                    "file_name": name, "text": caption, "shape": scene.shape.rawValue, "colour": scene.colour.rawValue,
                    "size": scene.size.rawValue, "position": scene.position.rawValue,
                    "background": scene.background.rawValue, "split": split.rawValue,
                    "quality": (Oracle.quality(image) * 1000).rounded() / 1000,
                ]
                if let degradation {
                    entry["degradation"] = degradation.kind.rawValue
                    entry["strength"] = (degradation.strength * 1000).rounded() / 1000
                }
                let json = try JSONSerialization.data(withJSONObject: entry, options: [.sortedKeys, .withoutEscapingSlashes])
                lines.append(String(decoding: json, as: UTF8.self))
                if sheet.count < 64 { sheet.append(image) }
            }
            try (lines.joined(separator: "\n") + "\n").write(
                to: folder.appendingPathComponent("metadata.jsonl"), atomically: true, encoding: .utf8)
            let grid = Renderer.contactSheet(sheet, columns: min(8, sheet.count), scale: 4)
            try PNG.encode(pixels: grid.pixels, width: grid.width, height: grid.height)
                .write(to: folder.appendingPathComponent("grid.png"), options: .atomic)
            print("wrote \(count) \(split.rawValue) scenes, metadata.jsonl and grid.png to \(folder.path)")
        }
    }
}
