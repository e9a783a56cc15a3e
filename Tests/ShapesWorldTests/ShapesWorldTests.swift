import Foundation
import Testing
import Torch

@testable import ShapesWorld

@Suite struct SceneTests {
    @Test func theWorldHas1680ScenesAndSplitsThem() {
        #expect(Scene.all.count == 1680)
        #expect(Set(Scene.all).count == 1680)
        let train = Split.train.scenes, held = Split.heldOut.scenes
        #expect(held.count == 3 * 2 * 5 * 7)  // 3 pairs × sizes × positions × backgrounds
        #expect(train.count + held.count == 1680)
        #expect(Set(train).isDisjoint(with: Set(held)))
        #expect(Split.train.pairs.count == 21 && Split.heldOut.pairs.count == 3)
        // Every shape and every colour still appears in training.
        #expect(Set(train.map(\.shape)) == Set(Shape.allCases))
        #expect(Set(train.map(\.colour)) == Set(NamedColour.allCases))
    }

    @Test func randomScenesStayInTheirSplitAndRepeatWithTheSeed() {
        for split in Split.allCases {
            var rng = SplitMix64(seed: 42)
            let scenes = (0..<2000).map { _ in Scene.random(split: split, using: &rng) }
            #expect(scenes.allSatisfy { split.contains($0) && $0.colour != $0.background })
            var again = SplitMix64(seed: 42)
            #expect(scenes == (0..<2000).map { _ in Scene.random(split: split, using: &again) })
            // Every attribute value is drawn.
            #expect(Set(scenes.map(\.position)).count == 5 && Set(scenes.map(\.size)).count == 2)
            #expect(Set(scenes.map(\.background)).count == 8)
        }
        var rng = SplitMix64(seed: 42)
        let training = (0..<5000).map { _ in Scene.random(using: &rng) }
        #expect(Set(training.map { "\($0.shape)-\($0.colour)" }).count == 21)
    }

    @Test func splitMix64MatchesTheReferenceSequence() {
        // SplitMix64 with seed 0: the published first outputs.
        var rng = SplitMix64(seed: 0)
        #expect(rng.next() == 0xE220_A839_7B1D_CDAF)
        #expect(rng.next() == 0x6E78_9E6A_A1B9_65F4)
    }

    @Test func namedColoursAreFarApart() {
        for a in NamedColour.allCases {
            for b in NamedColour.allCases where a != b {
                let d = a.vector - b.vector
                #expect((d * d).sum().squareRoot() >= 215)
            }
        }
    }
}

@Suite struct RendererTests {
    @Test func renderingIsDeterministicAndExactInside() {
        let scene = Scene(shape: .circle, colour: .red, size: .large, position: .left, background: .blue)
        let image = Renderer.render(scene)
        #expect(image.count == 32 * 32 * 3)
        #expect(image == Renderer.render(scene))
        // The circle's centre pixel is pure red, a corner pure blue, and the edge has blended pixels.
        #expect(Array(image[(16 * 32 + 8) * 3..<(16 * 32 + 8) * 3 + 3]) == [235, 20, 20])
        #expect(Array(image[0..<3]) == [20, 20, 235])
        let blended = stride(from: 0, to: image.count, by: 3).filter { image[$0] != 235 && image[$0] != 20 }
        #expect(blended.count > 10)
        // Same seed, same bytes, for a whole batch.
        var a = SplitMix64(seed: 9), b = SplitMix64(seed: 9)
        let first = (0..<50).map { _ in Renderer.render(Scene.random(using: &a)) }
        let second = (0..<50).map { _ in Renderer.render(Scene.random(using: &b)) }
        #expect(first == second)
    }

    @Test func coverageMatchesTheShapesArea() {
        // Σ coverage = area: square (2r)², circle πr², triangle 2r² (to within the 4×4 supersampling).
        for size in Size.allCases {
            let r = size.radius
            for (shape, area) in [(Shape.square, 4 * r * r), (.circle, Double.pi * r * r), (.triangle, 2 * r * r)] {
                let image = Renderer.render(Scene(shape: shape, colour: .white, size: size, position: .centre, background: .black))
                let covered = stride(from: 0, to: image.count, by: 3).map { Double(image[$0] - 20) / 215 }.reduce(0, +)
                #expect(abs(covered - area) < 0.02 * area + 1, "\(shape) \(size): \(covered) vs \(area)")
            }
        }
    }

    @Test func tensorsRoundTrip() {
        var rng = SplitMix64(seed: 3)
        let scenes = (0..<4).map { _ in Scene.random(using: &rng) }
        let batch = Renderer.renderTensor(scenes)
        #expect(batch.shape == [4, 3, 32, 32])
        #expect(batch.dtype == .float32)
        let values = batch.toArray(Float.self)
        #expect(values.min()! >= 0 && values.max()! <= 1)
        for (i, scene) in scenes.enumerated() {
            #expect(Renderer.pixels(batch[i]) == Renderer.render(scene))
            #expect(Oracle.read(batch[i]).attributes == scene.attributes)
        }
    }

    @Test func degradationsAreDeterministicAndZeroStrengthIsIdentity() {
        let image = Renderer.render(Scene(shape: .triangle, colour: .yellow, size: .large, position: .top, background: .magenta))
        for kind in Degradation.Kind.allCases {
            #expect(Degradation(kind, strength: 0, seed: 1).apply(to: image) == image)
            let d = Degradation(kind, strength: 0.7, seed: 5)
            #expect(d.apply(to: image) == d.apply(to: image))
            #expect(d.apply(to: image) != image, "\(kind)")
        }
        #expect(Degradation(.noise, strength: 0.7, seed: 5).apply(to: image) != Degradation(.noise, strength: 0.7, seed: 6).apply(to: image))
    }
}

@Suite struct OracleTests {
    /// The test: renderer and oracle agree on every attribute for 1000 random scenes (both splits).
    @Test func oracleReadsEveryAttributeOf1000RandomScenes() {
        var rng = SplitMix64(seed: 2024)
        var disagreements: [String] = []
        for k in 0..<1000 {
            let scene = Scene.random(split: k % 2 == 0 ? .train : .heldOut, using: &rng)
            let reading = Oracle.read(Renderer.render(scene))
            if reading.attributes != scene.attributes { disagreements.append("\(scene) read as \(reading)") }
        }
        #expect(disagreements.isEmpty, "\(disagreements.count) of 1000: \(disagreements.prefix(5))")
    }

    @Test func oracleReadsEveryOneOfThe1680Scenes() {
        let wrong = Scene.all.filter { Oracle.read(Renderer.render($0)).attributes != $0.attributes }
        #expect(wrong.isEmpty, "\(wrong.count): \(wrong.prefix(5))")
    }

    @Test func aPlainImageHasNoShape() {
        let plain = [UInt8](repeating: 20, count: 32 * 32 * 3)
        let reading = Oracle.read(plain)
        #expect(reading.background == .black && reading.shape == nil && reading.colour == nil)
        #expect(Oracle.quality(plain) == 1)
        #expect(Oracle.alignment(plain, prompt: "a red circle on a black background") == 1.0 / 3)
    }

    @Test func alignmentCountsTheStatedAttributesShown() {
        let scene = Scene(shape: .circle, colour: .red, size: .large, position: .left, background: .blue)
        let image = Renderer.render(scene)
        for seed in 0..<40 { #expect(Oracle.alignment(image, prompt: Captions.caption(for: scene, seed: UInt64(seed))) == 1) }
        #expect(Oracle.alignment(image, prompt: "a large red circle on the left, on a blue background") == 1)
        #expect(Oracle.alignment(image, prompt: "a large red square on the left, on a blue background") == 0.8)
        #expect(Oracle.alignment(image, prompt: "a small red circle on the left, on a blue background") == 0.8)
        #expect(Oracle.alignment(image, prompt: "a large green circle on the left, on a blue background") == 0.8)
        #expect(Oracle.alignment(image, prompt: "a large red circle at the top, on a blue background") == 0.8)
        #expect(Oracle.alignment(image, prompt: "a large red circle on the left, on a white background") == 0.8)
        #expect(Oracle.alignment(image, prompt: "a small green square at the top over a white background") == 0)
        #expect(Oracle.alignment(image, prompt: "a red square") == 0.5)
        #expect(Oracle.alignment(image, prompt: "a circle") == 1)
        #expect(Oracle.alignment(Renderer.renderTensor([scene])[0], prompt: "a blue triangle on a blue backdrop") == 1.0 / 3)
        #expect(Oracle.alignment(image, prompt: "a photo of a cat") == 1, "no attributes stated: nothing missed")
    }

    static let strengths = [0.0, 0.25, 0.5, 0.75, 1.0]
    static let probes = [
        Scene(shape: .circle, colour: .red, size: .large, position: .left, background: .blue),
        Scene(shape: .square, colour: .white, size: .small, position: .centre, background: .black),
        Scene(shape: .triangle, colour: .yellow, size: .large, position: .bottom, background: .cyan),
        Scene(shape: .circle, colour: .black, size: .small, position: .top, background: .green),
    ]

    @Test func cleanRendersScoreAtLeast8() {
        let scores = Scene.all.map { Oracle.quality(Renderer.render($0)) }
        #expect(scores.min()! >= 8, "lowest clean score \(scores.min()!)")
        #expect(scores.max()! <= 10)
    }

    @Test(arguments: Degradation.Kind.allCases)
    func qualityFallsWithEveryDegradationsStrength(kind: Degradation.Kind) {
        for scene in Self.probes {
            let image = Renderer.render(scene)
            let scores = Self.strengths.map { Oracle.quality(Degradation(kind, strength: $0, seed: 11).apply(to: image)) }
            #expect(zip(scores, scores.dropFirst()).allSatisfy { $0 > $1 }, "\(kind) \(scene): \(scores)")
            #expect(scores.last! < 6, "\(kind) at full strength: \(scores.last!)")
            #expect(scores.allSatisfy { (1...10).contains($0) })
        }
    }

    @Test func mildDegradationsStillReadCorrectly() {
        var wrong: [String] = []
        for scene in Self.probes {
            for kind in Degradation.Kind.allCases {
                let image = Degradation(kind, strength: 0.3, seed: 1).apply(to: Renderer.render(scene))
                let reading = Oracle.read(image)
                if reading.attributes != scene.attributes { wrong.append("\(kind) \(scene) read as \(reading)") }
            }
        }
        #expect(wrong.isEmpty, "\(wrong)")
    }
}

@Suite struct CaptionTests {
    @Test func everyTemplateParsesBackForEveryScene() {
        for scene in Scene.all {
            for template in 0..<Captions.templateCount {
                for variant: UInt64 in [0, 0b01_01_01, 0b10_10_10] {
                    let caption = Captions.caption(scene.attributes, template: template, variant: variant)
                    #expect(Captions.parse(caption) == scene.attributes, "\(caption)")
                }
            }
        }
    }

    @Test func everySubsetOfAttributesParsesBack() {
        let scene = Scene(shape: .triangle, colour: .cyan, size: .small, position: .centre, background: .magenta)
        for bits in 0..<32 {
            let a = PromptAttributes(
                shape: bits & 1 != 0 ? scene.shape : nil, colour: bits & 2 != 0 ? scene.colour : nil,
                size: bits & 4 != 0 ? scene.size : nil, position: bits & 8 != 0 ? scene.position : nil,
                background: bits & 16 != 0 ? scene.background : nil)
            for template in 0..<Captions.templateCount {
                let caption = Captions.caption(a, template: template, variant: UInt64(bits))
                #expect(Captions.parse(caption) == a, "\(caption)")
            }
        }
    }

    @Test func theTemplatesReadAsDocumented() {
        let a = Scene(shape: .circle, colour: .red, size: .large, position: .left, background: .blue).attributes
        #expect(Captions.caption(a, template: 0) == "a large red circle on the left, on a blue background")
        #expect(Captions.caption(a, template: 1) == "a large red circle on the left over a blue background")
        #expect(Captions.caption(a, template: 2) == "red circle, large, left side, blue background")
        #expect(Captions.caption(a, template: 3) == "a blue background with a large red circle on the left")
        #expect(Captions.caption(a, template: 4) == "a large red circle on the left against a blue backdrop")
        #expect(Captions.caption(a, template: 5) == "there is a large red circle on the left; the background is blue")
        #expect(Captions.caption(PromptAttributes(colour: .red), template: 0) == "a red shape")
        #expect(Captions.parse("A Big GREEN Disc in the middle, over a black backdrop")
            == PromptAttributes(shape: .circle, colour: .green, size: .large, position: .centre, background: .black))
    }

    @Test func captionsVaryWithTheSeedAndRepeatWithIt() {
        let scene = Scene(shape: .square, colour: .green, size: .small, position: .top, background: .white)
        let captions = (0..<64).map { Captions.caption(for: scene, seed: UInt64($0)) }
        #expect(Set(captions).count >= 10)
        #expect(captions == (0..<64).map { Captions.caption(for: scene, seed: UInt64($0)) })
    }
}
