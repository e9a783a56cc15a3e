import Foundation
import StableDiffusion
import Torch

/// A differentiable score of images for their prompts: higher is better. TextCraftor's loss is the negative weighted
/// sum of such scores, so `score` must keep the autograd graph back to the images.
public protocol Reward: AnyObject {
    /// The name used on the command line and in reports: `aesthetic`, `pickscore`, `hpsv2`, `hpsv2.1`, `clip`,
    /// `aesthetic25`, `imagereward`.
    var name: String { get }
    /// How images are brought to the tower's input size (training: the authors' pooling; evaluation: the reward
    /// model's own processor).
    var preprocessing: PreprocessingMode { get set }
    /// How the reward model's published tool brings an image file to the tower (Pillow's bicubic resize of the 8-bit
    /// image, its crop): what `score(files:)` runs, so scores of PNG and JPEG files equal the tool's. Rewards that do
    /// not say use torchvision's `Resize(224)` + `CenterCrop(224)` on PIL images.
    var fileProcessor: PublishedImageProcessor { get }
    /// Scores [B] for images [B, 3, H, W] with values in [0, 1] (any size) and one prompt per image.
    func score(_ images: Tensor, prompts: [String]) throws -> Tensor
}

/// Errors of the reward layer; `description` is one line naming the file, key, flag or count.
public enum RewardError: Error, CustomStringConvertible, Equatable, Sendable {
    case promptCount(images: Int, prompts: Int)
    case unknownReward(String, known: [String])
    case invalidModel(file: String, message: String)
    case invalidImage(file: String, message: String)
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .promptCount(let images, let prompts):
            "\(images) images but \(prompts) prompts: give one prompt per image, or one for all"
        case .unknownReward(let name, let known): "unknown reward \"\(name)\" (known: \(known.joined(separator: ", ")))"
        case .invalidModel(let file, let message): "\(file): \(message)"
        case .invalidImage(let file, let message): "\(file): \(message)"
        case .invalidArgument(let message): message
        }
    }
}

extension Reward {
    public var fileProcessor: PublishedImageProcessor { .torchvision(size: 224) }

    /// Scores [B] of 8-bit images read from files, as the reward model's published tool computes them: each image
    /// resized and cropped by `fileProcessor` (bit for bit as Pillow), then divided by 255 and normalised with the
    /// reward's evaluation preprocessing (which leaves an image of the input size as it is).
    public func score(files images: [RGB8Image], prompts: [String], device: Device = .cpu) throws -> Tensor {
        try score(processed: fileProcessor.tensor(images, device: device), prompts: prompts)
    }

    /// Scores [B] of images already processed by `fileProcessor` ([B, 3, size, size] in [0, 1]).
    func score(processed images: Tensor, prompts: [String]) throws -> Tensor {
        let mode = preprocessing
        preprocessing = .evaluation
        defer { preprocessing = mode }
        return try score(images, prompts: prompts)
    }

    /// One prompt per image: a single prompt is used for every image.
    public func promptsFor(_ images: Tensor, _ prompts: [String]) throws -> [String] {
        let count = images.size(0)
        if prompts.count == count { return prompts }
        if prompts.count == 1 { return Array(repeating: prompts[0], count: count) }
        throw RewardError.promptCount(images: count, prompts: prompts.count)
    }
}

/// Token ids [B, L] as an int64 tensor on `device`, from a tokenizer's padded output.
public func tokenIds(_ tokenizer: CLIPTokenizer, _ prompts: [String], maxLength: Int? = nil, device: Device = .cpu) -> Tensor {
    let ids = tokenizer.tokenize(prompts, maxLength: maxLength).ids
    return Tensor(ids.flatMap { $0.map(Int64.init) }, shape: [ids.count, ids.first?.count ?? 0]).to(device)
}
