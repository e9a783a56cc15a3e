import Torch

/// The two ways images reach a reward tower.
public enum PreprocessingMode: String, Sendable, CaseIterable {
    /// The TextCraftor authors' training path: adaptive average pooling straight to the input size (no crop),
    /// then CLIP's mean and std. Cheap and differentiable everywhere.
    case training
    /// What the reward models' own processors do: resize the short side to the input size with bicubic
    /// interpolation (antialiased, as torchvision resizes tensors), centre crop, then mean and std. SigLIP's
    /// processor resizes both sides to the input size instead, without a crop (`ImagePreprocessor.centreCrop`).
    case evaluation
}

/// Brings images [B, 3, H, W] in [0, 1] to a CLIP tower's normalised input [B, 3, size, size], in tensor ops.
public struct ImagePreprocessor: Sendable {
    public var size: Int
    public var mean: [Double]
    public var std: [Double]
    /// Evaluation: whether the short side is resized and the rest centre-cropped (CLIP's processors), or the image
    /// is resized to size x size whatever its aspect (SigLIP's). Training pools to size x size either way.
    public var centreCrop: Bool

    /// SigLIP's statistics (the Aesthetic Predictor v2.5): every channel to [-1, 1].
    public static let siglipMean = [0.5, 0.5, 0.5]
    public static let siglipStd = [0.5, 0.5, 0.5]

    /// OpenAI CLIP's statistics, used by every reward model here (METHOD.md).
    public static let clipMean = [0.48145466, 0.4578275, 0.40821073]
    public static let clipStd = [0.26862954, 0.26130258, 0.27577711]

    public init(size: Int = 224, mean: [Double] = Self.clipMean, std: [Double] = Self.clipStd, centreCrop: Bool = true) {
        self.size = size
        self.mean = mean
        self.std = std
        self.centreCrop = centreCrop
    }

    public func callAsFunction(_ images: Tensor, mode: PreprocessingMode) -> Tensor {
        let x = images.dtype.isFloatingPoint ? images : images.to(.float32)
        let sized: Tensor
        switch mode {
        case .training:
            sized = Functional.adaptiveAvgPool2d(x, outputSize: (size, size))
        case .evaluation where !centreCrop:
            sized = (x.size(2), x.size(3)) == (size, size)
                ? x : Functional.interpolate(x, size: (size, size), mode: .bicubic, antialias: true)
        case .evaluation:
            let (h, w) = (x.size(2), x.size(3))
            // torchvision's Resize(size): the short side becomes `size`, the long side int(size * long / short).
            let (newH, newW) = h <= w ? (size, Int(Double(size) * Double(w) / Double(h))) : (Int(Double(size) * Double(h) / Double(w)), size)
            let resized = (newH, newW) == (h, w) ? x : Functional.interpolate(x, size: (newH, newW), mode: .bicubic, antialias: true)
            // torchvision's CenterCrop: offsets rounded half to even, as Python's round.
            let top = Int((Double(newH - size) / 2).rounded(.toNearestOrEven))
            let left = Int((Double(newW - size) / 2).rounded(.toNearestOrEven))
            sized = resized.narrow(dim: 2, start: top, length: size).narrow(dim: 3, start: left, length: size)
        }
        let m = Tensor(mean.map(Float.init), shape: [1, 3, 1, 1]).to(dtype: sized.dtype, device: sized.device)
        let s = Tensor(std.map(Float.init), shape: [1, 3, 1, 1]).to(dtype: sized.dtype, device: sized.device)
        return (sized - m) / s
    }
}
