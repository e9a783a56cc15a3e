import Torch

extension Degradation.Kind {
    /// The word a caption uses for an image degraded this way.
    public var word: String {
        switch self {
        case .blur: return "blurry"
        case .noise: return "noisy"
        case .lowContrast: return "washed-out"
        case .colourShift: return "tinted"
        }
    }
}

/// How training images and their captions are drawn: a share of the renders is degraded, and a share of the captions
/// says how the image looks ("blurry, a large red circle ...", "sharp, a large red circle ...").
///
/// This is what lets quality live in the models, as it does in real ones: CLIP's image embeddings separate sharp from
/// blurry images only if its captions tell them apart, and a text-to-image model that saw both kinds under captions
/// silent about quality draws both for such a prompt, so that a text encoder can learn to steer it to the sharp ones.
public struct SampleRecipe: Hashable, Sendable, Codable {
    /// The probability that a render is degraded (one random `Degradation`).
    public var degradationProbability: Double
    /// The probability that a degraded image's caption names its degradation ("washed-out, a large red circle ...").
    public var qualityWordProbability: Double
    /// The probability that a clean image's caption says "sharp". Above `qualityWordProbability`, captions silent
    /// about quality come mostly with degraded images, as on the web, where the words "professional photo, sharp
    /// focus" go with the good pictures and plain captions with everything else.
    public var sharpWordProbability: Double
    /// The kinds of degradation drawn from (uniformly).
    public var kinds: [Degradation.Kind]
    /// Strengths are uniform in [minimumStrength, 1].
    public var minimumStrength: Double

    /// `sharpWordProbability` defaults to `qualityWordProbability`: every image's caption is then equally likely to
    /// name its quality.
    public init(degradationProbability: Double, qualityWordProbability: Double, sharpWordProbability: Double? = nil,
                kinds: [Degradation.Kind] = Degradation.Kind.allCases, minimumStrength: Double = 0.2) {
        self.degradationProbability = degradationProbability
        self.qualityWordProbability = qualityWordProbability
        self.sharpWordProbability = sharpWordProbability ?? qualityWordProbability
        self.kinds = kinds
        self.minimumStrength = minimumStrength
    }

    /// Clean renders, captions silent about quality.
    public static let clean = SampleRecipe(degradationProbability: 0, qualityWordProbability: 0)

    /// The word for a clean image.
    public static let cleanWord = "sharp"
}

/// One training example: a scene, the degradation applied to its render (if any), the image and its caption.
public struct Sample: Sendable {
    public var scene: Scene
    public var degradation: Degradation?
    /// 32×32 HWC bytes.
    public var pixels: [UInt8]
    public var caption: String

    /// A random scene of `split` drawn and captioned by `recipe`.
    public static func random(split: Split, recipe: SampleRecipe, using generator: inout some RandomNumberGenerator)
        -> Sample
    {
        let scene = Scene.random(split: split, using: &generator)
        return make(scene, recipe: recipe, using: &generator)
    }

    /// `scene` drawn and captioned by `recipe`.
    public static func make(_ scene: Scene, recipe: SampleRecipe, using generator: inout some RandomNumberGenerator)
        -> Sample
    {
        var pixels = Renderer.render(scene)
        var degradation: Degradation?
        if generator.unit() < recipe.degradationProbability {
            degradation = Degradation.random(kinds: recipe.kinds, minimumStrength: recipe.minimumStrength, using: &generator)
            pixels = degradation!.apply(to: pixels)
        }
        var caption = Captions.caption(for: scene, seed: generator.next())
        if generator.unit() < (degradation == nil ? recipe.sharpWordProbability : recipe.qualityWordProbability) {
            caption = (degradation?.kind.word ?? SampleRecipe.cleanWord) + ", " + caption
        }
        return Sample(scene: scene, degradation: degradation, pixels: pixels, caption: caption)
    }
}
