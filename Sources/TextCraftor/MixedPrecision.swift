import Foundation
import StableDiffusion
import Torch

/// Mixed precision for training, as accelerate's `--mixed_precision`: the frozen models (the UNet or the text
/// encoder that is not trained, the VAE, the original encoder, the reward towers) hold their weights in bfloat16 or
/// float16; the trained network keeps float32 weights, which are the optimizer's master weights, so AdamW's small
/// updates are not rounded away. The models cast what they are given to their own type and hand back the caller's,
/// so latents, embeddings and the loss stay float32 between them.
public enum MixedPrecision: String, CaseIterable, Codable, Sendable {
    case no, bf16, fp16

    /// The type of the frozen models' weights.
    public var frozenDType: DType {
        switch self {
        case .no: .float32
        case .bf16: .bfloat16
        case .fp16: .float16
        }
    }

    /// The pipeline of a model for training `target`: that network in float32, the rest in `frozenDType`.
    /// On SDXL each encoder has its own type: one that does not train stays in `frozenDType` beside one that does.
    /// A VAE whose config sets `force_upcast` (SD 1.x/2.x's overflows in float16) stays float32 under fp16, as
    /// diffusers upcasts it; bfloat16 has float32's range and needs no upcast.
    public func loadPipeline(_ model: ModelSource, device: Device, training target: TrainedNetwork) throws -> StableDiffusionPipeline {
        let frozen = frozenDType
        var vae = frozen
        if self == .fp16 {
            let config = try decodeConfig(AutoencoderKLConfig.self, from: model.folder.appendingPathComponent("vae/config.json"))
            if config.force_upcast { vae = .float32 }
        }
        return try model.load(
            dtype: frozen, device: device,
            textEncoderDType: target.trainsFirstEncoder ? .float32 : frozen,
            textEncoder2DType: target.trainsSecondEncoder ? .float32 : frozen, unetDType: target == .unet ? .float32 : frozen,
            vaeDType: vae)
    }
}

/// fp16's dynamic loss scaling, as `torch.amp.GradScaler` with its defaults: the loss is multiplied by `scale` so that
/// small gradients survive float16 (whose smallest normal number is 6e-5), and the gradients are divided by it before
/// the step. A step whose gradients overflowed is skipped and the scale halved; after `growthInterval` good steps in a
/// row it doubles. Part of the checkpoint, so a resumed run scales as the uninterrupted one.
public struct LossScaler: Codable, Equatable, Sendable {
    public var scale = 65536.0
    public var goodSteps = 0
    public static let growthInterval = 2000

    public init() {}

    /// Records a step's outcome; false when the step must be skipped (its gradients were not finite).
    public mutating func update(gradientsFinite: Bool) -> Bool {
        guard gradientsFinite else {
            scale /= 2
            goodSteps = 0
            return false
        }
        goodSteps += 1
        if goodSteps == Self.growthInterval {
            scale *= 2
            goodSteps = 0
        }
        return true
    }
}
