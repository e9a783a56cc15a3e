import Foundation
import NN
import Torch

/// Which text encoders condition the UNet, in what proportions, and for which denoising steps: TextCraftor's
/// controllable generation (interpolation and style mixing, METHOD.md).
///
/// The mixed embeddings are `Σ wᵢ · Tᵢ(prompt)`, for the prompts and for the negative (or empty) prompts alike, so
/// both halves of the classifier-free guidance context are mixed. Each encoder runs once per generation, not once
/// per step. They condition the last `finetunedSteps` UNet calls; the calls before use the pipeline's own encoder
/// alone, as the authors sample (the first 10 of 25 DDIM steps with the original encoder, the last 15 fine-tuned).
public struct EncoderMix {
    /// One term of the weighted sum.
    public struct Component {
        /// nil: the pipeline's own (original) text encoder.
        public var encoder: CLIPTextModel?
        /// SDXL: the `text_encoder_2` of this term; nil: the pipeline's own (a run that trained only the first
        /// encoder keeps the second). Ignored on SD 1.x/2.x.
        public var encoder2: CLIPTextModelWithProjection?
        public var weight: Double
        /// How messages name it: `original`, or the folder it was loaded from.
        public var name: String

        public init(encoder: CLIPTextModel?, encoder2: CLIPTextModelWithProjection? = nil, weight: Double, name: String? = nil) {
            self.encoder = encoder
            self.encoder2 = encoder2
            self.weight = weight
            self.name = name ?? (encoder == nil && encoder2 == nil ? "original" : "fine-tuned")
        }
    }

    public var components: [Component]
    /// How many of the last UNet calls use the mix (nil: all). The `S − finetunedSteps` calls before use the
    /// original encoder's embeddings; S is the scheduler's UNet calls (`timesteps.count`: PNDM's 10 steps are 11).
    public var finetunedSteps: Int?

    public init(_ components: [Component], finetunedSteps: Int? = nil) {
        self.components = components
        self.finetunedSteps = finetunedSteps
    }

    /// A fine-tuned encoder in place of the original one (for the last `finetunedSteps` calls).
    public static func finetuned(_ encoder: CLIPTextModel, name: String? = nil, finetunedSteps: Int? = nil) -> EncoderMix {
        EncoderMix([Component(encoder: encoder, weight: 1, name: name)], finetunedSteps: finetunedSteps)
    }

    /// Interpolation: `weight · e_finetuned + (1 − weight) · e_original`. 0 is the original encoder, 1 the
    /// fine-tuned one; above 1 extrapolates past the fine-tuned encoder, away from the original (the paper uses
    /// [0, 1]; beyond it the embeddings leave what either encoder produces, so expect artefacts as it grows).
    public static func blend(_ finetuned: CLIPTextModel, weight: Double, name: String? = nil, finetunedSteps: Int? = nil)
        -> EncoderMix
    {
        EncoderMix(
            [Component(encoder: nil, weight: 1 - weight), Component(encoder: finetuned, weight: weight, name: name)],
            finetunedSteps: finetunedSteps)
    }

    /// SDXL: fine-tuned encoders in place of the original ones (nil keeps the pipeline's own in that place).
    public static func finetuned(
        _ encoder: CLIPTextModel?, _ encoder2: CLIPTextModelWithProjection?, name: String? = nil, finetunedSteps: Int? = nil
    ) -> EncoderMix {
        EncoderMix([Component(encoder: encoder, encoder2: encoder2, weight: 1, name: name)], finetunedSteps: finetunedSteps)
    }

    /// SDXL: `weight · c_finetuned + (1 − weight) · c_original` for the hidden states and the pooled embeddings,
    /// where the fine-tuned conditioning uses `encoder`/`encoder2` in their places (nil: the original one kept).
    public static func blend(
        _ encoder: CLIPTextModel?, _ encoder2: CLIPTextModelWithProjection?, weight: Double, name: String? = nil,
        finetunedSteps: Int? = nil
    ) -> EncoderMix {
        EncoderMix(
            [Component(encoder: nil, weight: 1 - weight),
             Component(encoder: encoder, encoder2: encoder2, weight: weight, name: name)],
            finetunedSteps: finetunedSteps)
    }

    /// Style mixing: `Σ wᵢ · eᵢ` over encoders, nil standing for the original one (e.g. one encoder per reward with
    /// weights [0.1, 0.7, 0.1, 0.1]). The weights are used as given; if they do not sum to 1, the embeddings are
    /// scaled.
    public static func mix(_ terms: [(encoder: CLIPTextModel?, weight: Double)], finetunedSteps: Int? = nil) -> EncoderMix {
        EncoderMix(terms.map { Component(encoder: $0.encoder, weight: $0.weight) }, finetunedSteps: finetunedSteps)
    }
}

extension StableDiffusionPipeline {
    /// Loads a (fine-tuned) text encoder to mix with this pipeline's: a folder with `config.json` and
    /// `model.safetensors` (or `pytorch_model.bin`, or a variant), keys `text_model.*`, as the trainer writes
    /// `OUT/text_encoder/`. A folder without `config.json` that holds `text_encoder/` (a trainer's output folder, or
    /// another diffusers model) is read from there. Loaded in this pipeline's dtype and device; its `hidden_size`
    /// must be this pipeline's encoder's (the UNet's cross-attention width), which is checked before any weight is
    /// read. A file rather than a folder is a bare state dict (`loadTextEncoder(file:)`, `EncoderFile`).
    public func loadTextEncoder(folder: URL, variant: String? = nil) throws -> CLIPTextModel {
        guard architecture == .sd else { throw Self.mixOnSDXL }
        if EncoderFile.isFile(folder) { return try loadTextEncoder(file: folder) }
        var folder = folder
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw StableDiffusionError.missingFile(folder.path)
        }
        let nested = folder.appendingPathComponent("text_encoder")
        if !FileManager.default.fileExists(atPath: folder.appendingPathComponent("config.json").path),
            FileManager.default.fileExists(atPath: nested.appendingPathComponent("config.json").path)
        {
            folder = nested
        }
        let configFile = folder.appendingPathComponent("config.json")
        let config = try decodeConfig(CLIPTextConfig.self, from: configFile)
        let expected = textEncoder.config.hidden_size
        guard config.hidden_size == expected else {
            throw StableDiffusionError.invalidConfig(
                file: configFile.path,
                message: "hidden_size \(config.hidden_size) does not match the model's text encoder (\(expected))")
        }
        let weights = try componentWeights(in: folder, baseName: "model", binBaseName: "pytorch_model", variant: variant)
        let encoder = try CLIPTextModel.load(weights, configFile: configFile, dtype: textEncoder.parameters.first?.dtype, device: device)
        encoder.addedTokenEmbeddings = textEncoder.addedTokenEmbeddings  // the tokens `addToken` added read there too
        return encoder
    }

    /// The UNet calls a request makes with a scheduler (the folder's when nil): `timesteps.count` after
    /// `setTimesteps(request.steps)`, e.g. 11 for PNDM's 10 steps. The scheduler's timesteps are set as a side effect;
    /// `generate` sets them again.
    public func unetCalls(_ request: GenerationRequest, scheduler: (any Scheduler)? = nil) throws -> Int {
        let scheduler = try scheduler ?? makeScheduler()
        try scheduler.prepareSampling(steps: request.steps)
        return scheduler.timesteps.count
    }

    /// Checks a mix for `unetCalls` UNet calls without running anything: at least one encoder, finite weights, each
    /// encoder's hidden size this pipeline's, `finetunedSteps` within 0...unetCalls.
    public func validate(_ mix: EncoderMix, unetCalls: Int) throws {
        guard !mix.components.isEmpty else { throw StableDiffusionError.invalidArgument("an encoder mix needs at least one encoder") }
        let expected = textEncoder.config.hidden_size
        for component in mix.components {
            guard component.weight.isFinite else {
                throw StableDiffusionError.invalidArgument(
                    "the weight of text encoder \(component.name) must be a finite number (got \(component.weight))")
            }
            if let encoder = component.encoder, encoder.config.hidden_size != expected {
                throw StableDiffusionError.invalidArgument(
                    "text encoder \(component.name): hidden_size \(encoder.config.hidden_size) does not match the model's text encoder (\(expected))")
            }
            if let encoder2 = component.encoder2 {
                guard let own = textEncoder2 else {
                    throw StableDiffusionError.invalidArgument(
                        "text encoder \(component.name): a second text encoder (text_encoder_2) is for SDXL models")
                }
                guard encoder2.config.hidden_size == own.config.hidden_size,
                    encoder2.config.projection_dim == own.config.projection_dim
                else {
                    throw StableDiffusionError.invalidArgument(
                        "text encoder \(component.name): text_encoder_2's hidden_size \(encoder2.config.hidden_size) or projection_dim does not match the model's (\(own.config.hidden_size))")
                }
            }
        }
        if let n = mix.finetunedSteps, n < 0 || n > unetCalls {
            throw StableDiffusionError.invalidArgument(
                "--finetuned-steps must be between 0 and \(unetCalls) (the scheduler's UNet calls); got \(n)")
        }
    }

    /// `loadTextEncoder` reads one SD 1.x/2.x encoder; SDXL's run folders are read by `EncoderFolders` (TextCraftor).
    static let mixOnSDXL = StableDiffusionError.invalidArgument(
        "loadTextEncoder reads SD 1.x/2.x encoders; an SDXL model's encoders are loaded per place (text_encoder/, text_encoder_2/)")

    /// The mixed embeddings of prompts, `Σ wᵢ · Tᵢ(prompts)`: [B, 77, D], each encoder run once.
    public func encode(_ prompts: [String], mix: EncoderMix) -> Tensor {
        precondition(architecture == .sd, "StableDiffusionPipeline.encode(_:mix:): encoder mixes are for SD 1.x/2.x")
        let ids = tokenize(prompts).ids
        var cache: [ObjectIdentifier: Tensor] = [:]
        return mixed(mix) { encoder in
            if let hit = cache[ObjectIdentifier(encoder)] { return hit }
            let embeds = run(encoder, ids)
            cache[ObjectIdentifier(encoder)] = embeds
            return embeds
        }
    }

    /// `encoder(ids).lastHiddenState` in this pipeline's dtype and device, whatever the encoder's. With `clipSkip` N
    /// (diffusers' `clip_skip`), `hidden_states[-(N+1)]` through the final layer norm instead.
    func run(_ encoder: CLIPTextModel, _ ids: Tensor, clipSkip: Int? = nil) -> Tensor {
        let own = encoder.parameters.first
        let input = own.map { ids.device == $0.device ? ids : ids.to($0.device) } ?? ids
        let out: Tensor
        if let clipSkip {
            let states = encoder(input, outputHiddenStates: true).hiddenStates!
            out = encoder.finalLayerNorm(states[states.count - 1 - clipSkip])
        } else {
            out = encoder(input).lastHiddenState
        }
        let dtype = textEncoder.parameters.first?.dtype ?? out.dtype
        return out.dtype == dtype && out.device == device ? out : out.to(dtype: dtype, device: device)
    }

    /// `Σ wᵢ · embeds(encoderᵢ)`, skipping zero weights (a term 0 · e adds nothing to finite embeddings), so that
    /// a blend of 0 or 1 runs one encoder and gives its embeddings exactly.
    func mixed(_ mix: EncoderMix, _ embeds: (CLIPTextModel) -> Tensor) -> Tensor {
        var sum: Tensor? = nil
        for component in mix.components where component.weight != 0 {
            let term = embeds(component.encoder ?? textEncoder) * component.weight
            sum = sum.map { $0 + term } ?? term
        }
        // Every weight 0: zero embeddings, shaped as the original encoder's.
        return sum ?? embeds(textEncoder).zerosLike()
    }

    /// `Σ wᵢ · cᵢ` of conditionings (the hidden states and the pooled embeddings; the time ids, which do not depend on
    /// the text, taken from the first term), skipping zero weights as `mixed(_:_:)` does, so that a blend of 0 or 1
    /// gives one term's conditioning exactly.
    func mixedConditioning(_ mix: EncoderMix, _ embeds: (EncoderMix.Component?) -> Conditioning) -> Conditioning {
        var sum: Conditioning? = nil
        for component in mix.components where component.weight != 0 {
            let c = embeds(component)
            let hidden = c.hiddenStates * component.weight, pooled = c.textEmbeds.map { $0 * component.weight }
            if let s = sum {
                sum = Conditioning(
                    hiddenStates: s.hiddenStates + hidden,
                    textEmbeds: s.textEmbeds.flatMap { a in pooled.map { a + $0 } }, timeIds: s.timeIds)
            } else {
                sum = Conditioning(hiddenStates: hidden, textEmbeds: pooled, timeIds: c.timeIds)
            }
        }
        return sum ?? embeds(nil).zeroingText()
    }
}
