import CTorch

/// Neural-network functions, as `torch.nn.functional` (F.*) names them.
public enum Functional {
    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor? = nil) -> Tensor {
        FLOPCounter.record(2 * Double(x.elementCount) * Double(weight.size(0)), operands: [x, weight])
        return Tensor(handle: check(ct_linear(x.handle, weight.handle, bias?.handle), "linear"))
    }

    public static func conv2d(
        _ x: Tensor, weight: Tensor, bias: Tensor? = nil, stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0),
        dilation: (Int, Int) = (1, 1), groups: Int = 1
    ) -> Tensor {
        let s = [Int64(stride.0), Int64(stride.1)], p = [Int64(padding.0), Int64(padding.1)]
        let d = [Int64(dilation.0), Int64(dilation.1)]
        let output = Tensor(handle: check(ct_conv2d(x.handle, weight.handle, bias?.handle, s, p, d, Int64(groups)), "conv2d"))
        // Each output value is a dot product over (in / groups) · kh · kw inputs.
        FLOPCounter.record(2 * Double(output.elementCount) * Double(weight.elementCount / max(weight.size(0), 1)),
                           operands: [x, weight])
        return output
    }

    public static func groupNorm(_ x: Tensor, groups: Int, weight: Tensor? = nil, bias: Tensor? = nil, eps: Double = 1e-5) -> Tensor {
        Tensor(handle: check(ct_group_norm(x.handle, Int64(groups), weight?.handle, bias?.handle, eps), "group_norm"))
    }

    public static func layerNorm(
        _ x: Tensor, normalizedShape: [Int], weight: Tensor? = nil, bias: Tensor? = nil, eps: Double = 1e-5
    ) -> Tensor {
        Tensor(handle: check(Tensor.withShape(normalizedShape) {
            ct_layer_norm(x.handle, $0, $1, weight?.handle, bias?.handle, eps)
        }, "layer_norm"))
    }

    public static func softmax(_ x: Tensor, dim: Int) -> Tensor {
        Tensor(handle: check(ct_softmax(x.handle, Int64(dim), 0), "softmax"))
    }

    public static func logSoftmax(_ x: Tensor, dim: Int) -> Tensor {
        Tensor(handle: check(ct_softmax(x.handle, Int64(dim), 1), "log_softmax"))
    }

    /// `F.scaled_dot_product_attention` on [..., L, E] tensors. A bool mask keeps `true` positions; a float mask is
    /// added to the scores. `scale` nil means 1/sqrt(E).
    public static func scaledDotProductAttention(
        query: Tensor, key: Tensor, value: Tensor, mask: Tensor? = nil, dropout: Double = 0, isCausal: Bool = false,
        scale: Double? = nil
    ) -> Tensor {
        // Q·Kᵀ and P·V: 2 · 2 · (batch · heads) · Lq · Lk · D (a causal mask skips about half, counted whole).
        FLOPCounter.record(4 * Double(query.elementCount) * Double(key.size(key.rank - 2)), operands: [query, key])
        return Tensor(handle: check(ct_scaled_dot_product_attention(
            query.handle, key.handle, value.handle, mask?.handle, dropout, isCausal ? 1 : 0, scale ?? -1
        ), "scaled_dot_product_attention"))
    }

    public static func dropout(_ x: Tensor, p: Double, training: Bool) -> Tensor {
        Tensor(handle: check(ct_dropout(x.handle, p, training ? 1 : 0), "dropout"))
    }

    public static func embedding(_ indices: Tensor, weight: Tensor) -> Tensor {
        Tensor(handle: check(ct_embedding(weight.handle, indices.handle), "embedding"))
    }

    public enum InterpolationMode: Int32, Sendable {
        case nearest, bilinear, bicubic, nearestExact
    }

    /// `F.interpolate(x, size=...)` for 4-D input.
    public static func interpolate(
        _ x: Tensor, size: (Int, Int), mode: InterpolationMode, alignCorners: Bool = false, antialias: Bool = false
    ) -> Tensor {
        let s = [Int64(size.0), Int64(size.1)]
        return Tensor(handle: check(ct_interpolate(x.handle, mode.rawValue, s, nil, alignCorners ? 1 : 0, antialias ? 1 : 0), "interpolate"))
    }

    /// `F.interpolate(x, scale_factor=...)` for 4-D input.
    public static func interpolate(
        _ x: Tensor, scaleFactor: (Double, Double), mode: InterpolationMode, alignCorners: Bool = false,
        antialias: Bool = false
    ) -> Tensor {
        let f = [scaleFactor.0, scaleFactor.1]
        return Tensor(handle: check(ct_interpolate(x.handle, mode.rawValue, nil, f, alignCorners ? 1 : 0, antialias ? 1 : 0), "interpolate"))
    }

    public static func adaptiveAvgPool2d(_ x: Tensor, outputSize: (Int, Int)) -> Tensor {
        Tensor(handle: check(ct_adaptive_avg_pool2d(x.handle, [Int64(outputSize.0), Int64(outputSize.1)]), "adaptive_avg_pool2d"))
    }

    public static func avgPool2d(
        _ x: Tensor, kernelSize: (Int, Int), stride: (Int, Int)? = nil, padding: (Int, Int) = (0, 0),
        ceilMode: Bool = false, countIncludePad: Bool = true
    ) -> Tensor {
        let k = [Int64(kernelSize.0), Int64(kernelSize.1)]
        let s = stride.map { [Int64($0.0), Int64($0.1)] } ?? k
        let p = [Int64(padding.0), Int64(padding.1)]
        return Tensor(handle: check(ct_avg_pool2d(x.handle, k, s, p, ceilMode ? 1 : 0, countIncludePad ? 1 : 0), "avg_pool2d"))
    }

    public enum PadMode: Int32, Sendable {
        case constant, reflect, replicate, circular
    }

    /// `F.pad`: `pads` lists (before, after) pairs starting from the last dimension.
    public static func pad(_ x: Tensor, _ pads: [Int], mode: PadMode = .constant, value: Double = 0) -> Tensor {
        Tensor(handle: check(Tensor.withShape(pads) { ct_pad(x.handle, $0, $1, mode.rawValue, value) }, "pad"))
    }

    public static func cosineSimilarity(_ a: Tensor, _ b: Tensor, dim: Int = 1, eps: Double = 1e-8) -> Tensor {
        Tensor(handle: check(ct_cosine_similarity(a.handle, b.handle, Int64(dim), eps), "cosine_similarity"))
    }

    /// `F.normalize`: x / max(‖x‖_p, eps) along `dim`.
    public static func normalize(_ x: Tensor, p: Double = 2, dim: Int = 1, eps: Double = 1e-12) -> Tensor {
        Tensor(handle: check(ct_normalize(x.handle, p, Int64(dim), eps), "normalize"))
    }

    public enum Reduction: Int32, Sendable {
        case none = 0, mean = 1, sum = 2
    }

    public static func mseLoss(_ a: Tensor, _ b: Tensor, reduction: Reduction = .mean) -> Tensor {
        Tensor(handle: check(ct_mse_loss(a.handle, b.handle, reduction.rawValue), "mse_loss"))
    }
}
