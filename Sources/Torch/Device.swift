import CTorch
import Foundation

/// Where a tensor lives. CUDA needs `libtorch_cuda.so`, which is loaded on first use (see `Torch.loadCUDA`).
/// `meta` tensors have a shape and a type but no storage: a model built there costs nothing (`synth-model`'s checks).
public enum Device: Equatable, Hashable, Sendable, CustomStringConvertible {
    case cpu
    case cuda(Int)
    case meta

    public static let cuda = Device.cuda(0)

    /// Parses `cpu`, `cuda` and `cuda:N`.
    public init?(_ text: String) {
        if text == "cpu" { self = .cpu; return }
        if text == "cuda" { self = .cuda(0); return }
        if text == "meta" { self = .meta; return }
        guard text.hasPrefix("cuda:"), let index = Int(text.dropFirst(5)), index >= 0 else { return nil }
        self = .cuda(index)
    }

    public var description: String {
        switch self {
        case .cpu: "cpu"
        case .cuda(let i): "cuda:\(i)"
        case .meta: "meta"
        }
    }

    var typeCode: Int32 {
        switch self {
        case .cpu: Int32(CT_CPU)
        case .cuda: Int32(CT_CUDA)
        case .meta: Int32(CT_META)
        }
    }

    var index: Int32 {
        switch self {
        case .cpu, .meta: 0
        case .cuda(let i): Int32(i)
        }
    }
}
