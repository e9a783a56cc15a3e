import Foundation
import StableDiffusion
import Torch

/// Which text encoder(s) condition generation (`text_encoder`, `blend`, `mix`, `finetuned_steps` of a
/// `GenerationConfig`): parsed and checked as text before the model loads, then loaded into an `EncoderMix` before
/// anything is written.
public struct EncoderRecipe {
    /// `original` for the model's own encoder, otherwise a folder as given.
    static let originalName = "original"

    /// The weighted terms: folder nil is the original encoder.
    let terms: [(folder: String?, weight: Double)]
    let textEncoder: String?
    let blend: Double?
    let isMix: Bool
    let finetunedSteps: Int?

    /// nil when no flag asks for another encoder.
    public init?(textEncoder: String?, blend: String?, mix: [String], finetunedSteps: Int?) throws {
        if !mix.isEmpty, textEncoder != nil || blend != nil {
            throw Self.fail("mix", "cannot be used with text_encoder or blend")
        }
        if blend != nil, textEncoder == nil { throw Self.fail("blend", "needs text_encoder") }
        if finetunedSteps != nil, textEncoder == nil, mix.isEmpty {
            throw Self.fail("finetuned_steps", "needs text_encoder or mix")
        }
        self.finetunedSteps = finetunedSteps
        self.textEncoder = textEncoder
        if let textEncoder {
            isMix = false
            if let blend {
                guard let w = finiteNumber(blend) else { throw Self.fail("blend", "\"\(blend.prefix(40))\" is not a number") }
                guard w >= 0 else { throw Self.fail("blend", "expected a number >= 0, found \(w)") }
                self.blend = w
                terms = [(nil, 1 - w), (textEncoder, w)]
            } else {
                self.blend = nil
                terms = [(textEncoder, 1)]
            }
            return
        }
        guard !mix.isEmpty else { return nil }
        isMix = true
        self.blend = nil
        var terms: [(folder: String?, weight: Double)] = [], seen: Set<String> = []
        for entry in mix.flatMap({ $0.split(separator: ",", omittingEmptySubsequences: false) }).map(String.init) {
            let trimmed = entry.trimmingCharacters(in: .whitespaces)
            guard let equals = trimmed.lastIndex(of: "=") else { throw Self.badEntry(entry) }
            let name = trimmed[..<equals].trimmingCharacters(in: .whitespaces)
            let weightText = trimmed[trimmed.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, !weightText.isEmpty else { throw Self.badEntry(entry) }
            guard let weight = finiteNumber(weightText) else {
                throw Self.fail("mix", "entry \"\(entry.prefix(80))\": weight \"\(weightText.prefix(40))\" is not a number")
            }
            guard weight >= 0 else { throw Self.fail("mix", "entry \"\(entry.prefix(80))\": weight must not be negative (got \(weight))") }
            guard seen.insert(name).inserted else { throw Self.fail("mix", "names \"\(name.prefix(80))\" twice") }
            terms.append((name == Self.originalName ? nil : name, weight))
        }
        self.terms = terms
    }

    static func badEntry(_ entry: String) -> TextCraftorError {
        fail("mix", "entry \"\(entry.prefix(80))\": expected DIR=W (the model's own encoder is named \(originalName))")
    }

    static func fail(_ key: String, _ message: String) -> TextCraftorError { .invalidSetting(key: key, message: message) }

    /// Loads each folder once (checking its config's hidden size before its weights) and checks the mix against
    /// the scheduler's UNet calls. `warn(key, message)` hears of weights that do not sum to 1.
    ///
    /// On SDXL, `text_encoder` names an encoder folder or a run folder holding `text_encoder/` and/or
    /// `text_encoder_2/` (`EncoderFolders`; an SD 1.x encoder, CLIP ViT-L, stands in for the first): their weights
    /// replace the pipeline's own, in place, as diffusers would load a folder with those components swapped, and no
    /// mix is returned. With a blend, a mix or `finetuned_steps`, each folder is loaded per place into fresh encoders
    /// (the untrained place keeps the model's own) and mixed as on SD 1.x/2.x, hidden states and pooled embeddings.
    public func load(into pipeline: StableDiffusionPipeline, variant: String?, unetCalls: Int, warn: (String, String) -> Void = { _, _ in })
        throws -> EncoderMix?
    {
        if pipeline.architecture == .sdxl, !isMix, blend == nil, finetunedSteps == nil {
            guard let textEncoder else { return nil }
            let folders = try EncoderFolders.resolve(textEncoder, key: "text_encoder", architecture: .sdxl)
            try folders.load(into: pipeline, variant: variant)
            return nil
        }
        var loaded: [String: EncoderMix.Component] = [:]
        var components: [EncoderMix.Component] = []
        for (folder, weight) in terms {
            guard let folder else {
                components.append(EncoderMix.Component(encoder: nil, weight: weight, name: Self.originalName))
                continue
            }
            var component: EncoderMix.Component
            if let hit = loaded[folder] {
                component = hit
            } else if pipeline.architecture == .sdxl {
                let key = isMix ? "mix" : "text_encoder"
                let folders = try EncoderFolders.resolve(folder, key: key, architecture: .sdxl)
                do {
                    let encoders = try folders.encoders(for: pipeline, variant: variant)
                    component = EncoderMix.Component(encoder: encoders.first, encoder2: encoders.second, weight: weight, name: folder)
                } catch {
                    throw Self.fail(key, "\(excerpt(folder, limit: 200)): \(error)")
                }
            } else {
                component = EncoderMix.Component(
                    encoder: try pipeline.loadTextEncoder(folder: URL(fileURLWithPath: folder), variant: variant), weight: weight,
                    name: folder)
            }
            loaded[folder] = component
            component.weight = weight
            components.append(component)
        }
        let mix = EncoderMix(components, finetunedSteps: finetunedSteps)
        try pipeline.validate(mix, unetCalls: unetCalls)
        let sum = terms.map(\.weight).reduce(0, +)
        if isMix, abs(sum - 1) > 1e-9 { warn("mix", "weights sum to \(sum), not 1: the embeddings are scaled by it") }
        return mix
    }

    /// What metadata.json records: the flags as resolved (the blend weight 1 when only --text-encoder was given; the
    /// fine-tuned calls resolved to all of them when --finetuned-steps was not).
    public func metadata(unetCalls: Int) -> [String: Any] {
        [
            "text_encoder": textEncoder ?? NSNull(),
            "blend": textEncoder == nil ? NSNull() : blend ?? 1.0,
            "mix": isMix ? terms.map { ["encoder": $0.folder ?? Self.originalName, "weight": $0.weight] as [String: Any] } : NSNull(),
            "finetuned_steps": finetunedSteps ?? unetCalls,
        ]
    }

    /// The same keys when the model's own encoder conditions every call.
    public static var noMetadata: [String: Any] {
        [
            "text_encoder": NSNull(), "blend": NSNull(), "mix": NSNull(), "finetuned_steps": NSNull(),
        ]
    }
}
