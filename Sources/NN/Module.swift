import Foundation
import Torch

/// A model part. Its parameters are the tensors its VarBuilder handed out under its path, kept by their full
/// checkpoint names, so a module can be frozen, made trainable, saved and reloaded under the names it was loaded from
/// without listing its tensors by hand.
public protocol Module: AnyObject {
    var scope: ParameterScope { get }
}

/// The tensors of one module: those of a shared store whose names start with the module's path.
public struct ParameterScope {
    let store: ParameterStore
    public let prefix: String

    /// (name relative to this module, tensor), in the order they were created.
    public var namedTensors: [(name: String, tensor: Tensor)] {
        let start = prefix.isEmpty ? "" : prefix + "."
        return store.order.filter { start.isEmpty || $0.hasPrefix(start) }
            .map { (String($0.dropFirst(start.count)), store.tensors[$0]!) }
    }
}

extension Module {
    /// Parameters by their names relative to this module (`encoder.layers.0.mlp.fc1.weight`).
    public var namedParameters: [(name: String, tensor: Tensor)] { scope.namedTensors }

    public var parameters: [Tensor] { namedParameters.map(\.tensor) }

    /// Floating-point parameters that autograd tracks.
    public var trainableParameters: [Tensor] { parameters.filter(\.requiresGrad) }

    /// Makes every floating-point parameter of this module (and its submodules) trainable, or frozen.
    public func setTrainable(_ trainable: Bool) {
        for p in parameters where p.dtype.isFloatingPoint { p.requiresGrad = trainable }
    }

    /// `model.state_dict()` with the keys the checkpoint used (`prefix` adds a path in front of them all).
    public func stateDict(prefix: String = "") -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (name, tensor) in namedParameters { out[prefix.isEmpty ? name : "\(prefix).\(name)"] = tensor.detach() }
        return out
    }

    /// Saves the parameters as safetensors under their original names (written to a temporary file, then renamed).
    public func save(to url: URL, prefix: String = "", metadata: [String: String]? = nil) throws {
        try Tensor.save(stateDict(prefix: prefix), metadata: metadata, to: url)
    }

    /// Copies tensors into this module's parameters, in place. Strict: the keys must be exactly this module's, with
    /// the same shapes; every difference is reported in one error before anything is copied.
    public func load(_ source: any WeightSource) throws {
        let own = Dictionary(uniqueKeysWithValues: namedParameters.map { ($0.name, $0.tensor) })
        var missing: [(key: String, shape: [Int])] = [], mismatched: [(key: String, checkpoint: [Int], model: [Int])] = []
        for (name, tensor) in namedParameters {
            guard let info = source.info(name) else { missing.append((name, tensor.shape)); continue }
            if info.shape != tensor.shape { mismatched.append((name, info.shape, tensor.shape)) }
        }
        let unused = source.keys.filter { own[$0] == nil }
        guard missing.isEmpty, mismatched.isEmpty, unused.isEmpty else {
            throw WeightLoadingError.mismatch(origin: source.origin, missing: missing, unused: unused, mismatched: mismatched)
        }
        try withNoGrad {
            for (name, tensor) in own { tensor.copy_(try source.tensor(name)) }
        }
    }
}
