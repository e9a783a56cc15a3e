import Foundation
import Torch

/// What conditions the UNet besides the latents and the timestep, as one value so that sampling, guidance and the
/// trainer's backward walk treat SD 1.x/2.x and SDXL alike.
///
/// - `hiddenStates` [B, 77, D]: the text embeddings the cross-attention reads (SD 1.x/2.x: the text encoder's last
///   hidden state; SDXL: both encoders' penultimate states side by side, D = 768 + 1280).
/// - `textEmbeds` [B, P] (SDXL only): `text_encoder_2`'s projected pooled output, which `add_embedding` adds to the
///   time embedding (diffusers' `added_cond_kwargs["text_embeds"]`).
/// - `timeIds` [B, 6] (SDXL only): original size, crop top-left and target size, (height, width) each (diffusers'
///   `add_time_ids`). They do not depend on the text, so they carry no gradient.
///
/// Rows follow the batch: with classifier-free guidance the unconditional rows come first, as in diffusers.
public struct Conditioning {
    public var hiddenStates: Tensor
    public var textEmbeds: Tensor?
    public var timeIds: Tensor?

    public init(hiddenStates: Tensor, textEmbeds: Tensor? = nil, timeIds: Tensor? = nil) {
        self.hiddenStates = hiddenStates
        self.textEmbeds = textEmbeds
        self.timeIds = timeIds
    }

    public var batchSize: Int { hiddenStates.size(0) }

    /// The floating-point types of its tensors (for the UNet's casting).
    var floatingPointTypes: [DType] { [hiddenStates.dtype] + [textEmbeds, timeIds].compactMap { $0?.dtype } }

    /// The text-dependent tensors, which gradients flow through: the hidden states, and the pooled embeddings.
    public var differentiableTensors: [Tensor] { [hiddenStates] + (textEmbeds.map { [$0] } ?? []) }

    /// The rows of several conditionings one after the other (the guidance batch: unconditional, then conditional).
    /// They must all carry the same parts.
    public static func cat(_ parts: [Conditioning]) -> Conditioning {
        func joined(_ part: (Conditioning) -> Tensor?) -> Tensor? {
            let tensors = parts.compactMap(part)
            precondition(tensors.isEmpty || tensors.count == parts.count, "Conditioning.cat: the parts carry different tensors")
            return tensors.isEmpty ? nil : tensors.count == 1 ? tensors[0] : Tensor.cat(tensors)
        }
        return Conditioning(hiddenStates: joined(\.hiddenStates)!, textEmbeds: joined(\.textEmbeds), timeIds: joined(\.timeIds))
    }

    /// The first and second half of the rows (the guidance batch's unconditional and conditional parts), as views
    /// whose gradients reach this conditioning's tensors.
    public func halves() -> (Conditioning, Conditioning) {
        precondition(batchSize % 2 == 0, "Conditioning.halves: an odd batch of \(batchSize)")
        return (map { $0.chunk(2)[0] }, map { $0.chunk(2)[1] })
    }

    /// Each row `n` times in a row: [B, ...] -> [B*n, ...] (diffusers' repeat + view for several images per prompt).
    public func repeatingEach(_ n: Int) -> Conditioning {
        guard n > 1 else { return self }
        return map { $0.repeatInterleave(n, dim: 0) }
    }

    /// Every tensor in `dtype` and on `device` (a no-op for those already there).
    public func to(dtype: DType? = nil, device: Device? = nil) -> Conditioning {
        map { tensor in
            let type = dtype ?? tensor.dtype, place = device ?? tensor.device
            return tensor.dtype == type && tensor.device == place ? tensor : tensor.to(dtype: type, device: place)
        }
    }

    /// The same values cut from any graph.
    public func detached() -> Conditioning { map { $0.detach() } }

    /// Detached copies of the text-dependent tensors that record their gradient (the time ids stay as they are): the
    /// leaves a backward pass through one UNet step accumulates into (`gradients`).
    public func requiringGrad() -> Conditioning {
        Conditioning(
            hiddenStates: hiddenStates.detach().requiringGrad(), textEmbeds: textEmbeds?.detach().requiringGrad(),
            timeIds: timeIds)
    }

    /// The gradients accumulated in the leaves of `requiringGrad()` (zeros where a part received none), shaped as a
    /// conditioning without time ids.
    public var gradients: Conditioning {
        Conditioning(hiddenStates: hiddenStates.grad ?? hiddenStates.zerosLike(), textEmbeds: textEmbeds.map { $0.grad ?? $0.zerosLike() })
    }

    /// Zeros in place of the text-dependent tensors, the time ids kept: SDXL's unconditional conditioning when the
    /// negative prompt is empty and the model sets `force_zeros_for_empty_prompt`.
    public func zeroingText() -> Conditioning {
        Conditioning(hiddenStates: hiddenStates.zerosLike(), textEmbeds: textEmbeds?.zerosLike(), timeIds: timeIds)
    }

    /// Zeros shaped as the text-dependent tensors: the start of a running sum of `gradients`.
    public func zeroGradients() -> Conditioning {
        Conditioning(hiddenStates: hiddenStates.zerosLike(), textEmbeds: textEmbeds?.zerosLike())
    }

    /// Adds `other`'s text-dependent tensors into this one's, in place (a running sum of gradients).
    public func accumulate(_ other: Conditioning) {
        hiddenStates += other.hiddenStates
        if let textEmbeds, let more = other.textEmbeds { textEmbeds += more }
    }

    /// Backpropagates `gradient` (d(loss)/d(each text-dependent tensor)) from this conditioning's tensors into what
    /// produced them, the text encoders, in one backward pass from both outputs (`torch.autograd.backward` with two
    /// tensors and two gradients): SDXL's hidden states and pooled embeddings share `text_encoder_2`'s graph, which is
    /// then walked once.
    /// A tensor without a graph (the pooled embeddings when only `text_encoder` is trained) is left out, as it leads
    /// to no parameter; with none left there is nothing to do.
    public func backward(gradient: Conditioning) {
        var pairs = [(hiddenStates, gradient.hiddenStates)]
        if let textEmbeds, let pooledGradient = gradient.textEmbeds { pairs.append((textEmbeds, pooledGradient)) }
        pairs = pairs.filter { $0.0.requiresGrad }
        guard !pairs.isEmpty else { return }
        Autograd.backward(pairs.map(\.0), gradients: pairs.map(\.1))
    }

    func map(_ transform: (Tensor) -> Tensor) -> Conditioning {
        Conditioning(hiddenStates: transform(hiddenStates), textEmbeds: textEmbeds.map(transform), timeIds: timeIds.map(transform))
    }
}

/// SDXL's size and crop conditioning (diffusers' `original_size`, `crops_coords_top_left`, `target_size`), in pixels,
/// (height, width) and (top, left). The UNet was trained with the size of each training image before resizing and
/// the crop taken from it; asking for (0, 0) and the output size, diffusers' defaults, asks for a centred, uncropped
/// picture.
public struct SizeConditioning: Sendable, Equatable {
    public var originalHeight: Int
    public var originalWidth: Int
    public var cropTop: Int
    public var cropLeft: Int
    public var targetHeight: Int
    public var targetWidth: Int

    /// diffusers' defaults for an image of `height` x `width`: original and target sizes both the image's, no crop.
    public init(height: Int, width: Int, cropTop: Int = 0, cropLeft: Int = 0) {
        self.init(original: (height, width), cropTopLeft: (cropTop, cropLeft), target: (height, width))
    }

    public init(original: (height: Int, width: Int), cropTopLeft: (top: Int, left: Int), target: (height: Int, width: Int)) {
        (originalHeight, originalWidth) = original
        (cropTop, cropLeft) = cropTopLeft
        (targetHeight, targetWidth) = target
    }

    /// The six numbers in diffusers' order: original size, crop top-left, target size.
    public var values: [Int] { [originalHeight, originalWidth, cropTop, cropLeft, targetHeight, targetWidth] }

    /// `time_ids` for `batch` rows: [batch, 6] float32 on `device`, every row the same.
    public func timeIds(batch: Int, device: Device = .cpu) -> Tensor {
        Tensor(Array(repeating: values.map(Float.init), count: batch).flatMap { $0 }, shape: [batch, 6]).to(device)
    }
}

/// Token ids of prompts for each of a pipeline's tokenizers: `ids` [B, 77] of `tokenizer`, and for SDXL `ids2`
/// [B, 77] of `tokenizer_2` (which pads with "!", id 0), possibly from other texts (`prompt_2`).
public struct PromptTokens {
    public var ids: Tensor
    public var ids2: Tensor?
    /// Per prompt, the words the first tokenizer dropped past its length (nil where nothing was dropped).
    public var truncatedWords: [String?]
    /// The same for the second tokenizer and its texts (all nil without one).
    public var truncatedWords2: [String?]

    public init(ids: Tensor, ids2: Tensor? = nil, truncatedWords: [String?]? = nil, truncatedWords2: [String?]? = nil) {
        self.ids = ids
        self.ids2 = ids2
        self.truncatedWords = truncatedWords ?? Array(repeating: nil, count: ids.size(0))
        self.truncatedWords2 = truncatedWords2 ?? Array(repeating: nil, count: ids.size(0))
    }

    public var batchSize: Int { ids.size(0) }

    /// Rows of several token batches one after the other (all with or all without `ids2`).
    public static func cat(_ parts: [PromptTokens]) -> PromptTokens {
        let seconds = parts.compactMap(\.ids2)
        return PromptTokens(
            ids: Tensor.cat(parts.map(\.ids)), ids2: seconds.count == parts.count ? Tensor.cat(seconds) : nil,
            truncatedWords: parts.flatMap(\.truncatedWords), truncatedWords2: parts.flatMap(\.truncatedWords2))
    }
}
