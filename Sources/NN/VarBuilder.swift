import Foundation
import Torch

/// How a tensor is made when a model is built without a checkpoint (PyTorch's default initialisations).
public enum Initializer: Sendable {
    case zeros
    case ones
    case normal(std: Double)
    /// U(-1/sqrt(fanIn), 1/sqrt(fanIn)): what nn.Linear and nn.Conv2d give weights and biases
    /// (kaiming_uniform with a = sqrt(5) reduces to this bound).
    case uniformFanIn(Int)
}

/// Hands out a model's tensors by the names its checkpoint uses, one dotted path per module
/// (`vb.pp("encoder").pp("layers").pp(3).get([768, 3072], "mlp.fc1.weight")`), checking every shape.
///
/// Loading is strict: `finish()` reports, in one error, every key the model asked for and the checkpoint lacks,
/// every checkpoint key the model never asked for, and every shape mismatch. Known alternative names (the old VAE
/// attention names, say) are given where they are documented, with `get(_:_:aliases:)`.
public struct VarBuilder {
    let store: ParameterStore
    public let prefix: String
    /// Other paths the checkpoint may keep this module under (old names), tried in order after `prefix`.
    let aliasPrefixes: [String]

    /// Tensors come from `source`, converted to `dtype` (floating-point tensors only) and moved to `device`.
    public init(_ source: any WeightSource, dtype: DType? = nil, device: Device = .cpu) {
        store = ParameterStore(source: source, dtype: dtype, device: device, generator: nil)
        prefix = ""
        aliasPrefixes = []
    }

    /// Tensors are created fresh, by each `get`'s initializer, drawing from `generator`.
    public init(initializingWith generator: Generator, dtype: DType = .float32, device: Device = .cpu) {
        store = ParameterStore(source: nil, dtype: dtype, device: device, generator: generator)
        prefix = ""
        aliasPrefixes = []
    }

    /// Every tensor is zeros on `device` whatever its initializer: on `.meta` a model is built with its names and
    /// shapes and no storage (what a real-sized model holds, checked without allocating it).
    public init(shapesOn device: Device, dtype: DType = .float32) {
        store = ParameterStore(source: nil, dtype: dtype, device: device, generator: nil)
        prefix = ""
        aliasPrefixes = []
    }

    /// Checks `source`'s names and shapes (from its header or index) against a model without reading any tensor
    /// data: every tensor is handed out as zeros on `.meta`, and `finish()` reports what does not fit. Building a
    /// model this way first refuses a checkpoint for another architecture before gigabytes are allocated.
    public init(checkingShapesOf source: any WeightSource) {
        store = ParameterStore(source: source, dtype: nil, device: .meta, generator: nil, readsData: false)
        prefix = ""
        aliasPrefixes = []
    }

    init(store: ParameterStore, prefix: String, aliasPrefixes: [String] = []) {
        self.store = store
        self.prefix = prefix
        self.aliasPrefixes = aliasPrefixes
    }

    /// The builder one level down: `vb.pp("down_blocks").pp(0)`.
    public func pp(_ name: String) -> VarBuilder {
        VarBuilder(store: store, prefix: key(name), aliasPrefixes: aliasPrefixes.map { "\($0).\(name)" })
    }
    public func pp(_ index: Int) -> VarBuilder { pp(String(index)) }

    /// The builder one level down at `name`, whose tensors may also be stored under the old name `alias`
    /// (`vb.pp("to_q", alias: "query")` finds `query.weight` when `to_q.weight` is absent). Tensors are handed out
    /// under the new name, so the model saves them that way.
    public func pp(_ name: String, alias: String) -> VarBuilder {
        let child = pp(name)
        return VarBuilder(store: store, prefix: child.prefix, aliasPrefixes: child.aliasPrefixes + [key(alias)])
    }

    /// This builder, whose tensors may also be stored with `wrapper` in front of their whole path: a model saved
    /// from inside a wrapper module, such as PyTorch's DistributedDataParallel (`module.visual.proj` for
    /// `visual.proj`): `vb.allowingWrapper("module")`. The unwrapped name wins when a checkpoint has both (the other
    /// is then an unused key), and tensors are handed out under the unwrapped name.
    public func allowingWrapper(_ wrapper: String) -> VarBuilder {
        let wrapped = prefix.isEmpty ? wrapper : "\(wrapper).\(prefix)"
        return VarBuilder(store: store, prefix: prefix, aliasPrefixes: aliasPrefixes + [wrapped])
    }

    public func key(_ name: String) -> String { prefix.isEmpty ? name : "\(prefix).\(name)" }

    public var dtype: DType? { store.dtype }
    public var device: Device { store.device }

    /// Whether the checkpoint has `name` under this path (always false when initializing).
    public func contains(_ name: String) -> Bool {
        ([key(name)] + aliasKeys(name)).contains { store.source?.info($0) != nil }
    }

    /// `name` under each alias path of this builder.
    func aliasKeys(_ name: String) -> [String] { aliasPrefixes.map { "\($0).\(name)" } }

    /// The tensor at `name` (or the first alias the checkpoint has), checked against `shape`. A missing key or a
    /// wrong shape is recorded for `finish()`, and a zero tensor of the asked shape stands in meanwhile.
    public func get(_ shape: [Int], _ name: String, aliases: [String] = [], initializer: Initializer = .zeros) -> Tensor {
        store.get(
            shape: shape, key: key(name), aliases: aliases.map(key) + aliasKeys(name), initializer: initializer,
            required: true)!
    }

    /// Like `get`, but a key the checkpoint lacks is fine (nil), for optional tensors such as `position_ids`.
    public func optional(_ shape: [Int], _ name: String) -> Tensor? {
        store.get(shape: shape, key: key(name), aliases: aliasKeys(name), initializer: .zeros, required: false)
    }

    /// Marks checkpoint keys under this path as deliberately unused (tensors a model recomputes, such as buffers).
    public func ignore(_ names: String...) { names.forEach { store.used.insert(key($0)) } }

    /// The scope of a module built at this path.
    public var scope: ParameterScope { ParameterScope(store: store, prefix: prefix) }

    /// Throws one error listing every missing key, unused key and shape mismatch, if there are any.
    public func finish() throws {
        guard let source = store.source else { return }
        if let unreadable = store.readErrors.first { throw unreadable }
        let unused = source.keys.filter { !store.used.contains($0) }
        guard store.missing.isEmpty, store.mismatched.isEmpty, unused.isEmpty else {
            throw WeightLoadingError.mismatch(
                origin: source.origin, missing: store.missing, unused: unused, mismatched: store.mismatched)
        }
    }

    /// Builds a model from `weights`, strictly, in two passes: names and shapes first, from the file's header or index
    /// on `.meta` (no tensor read, nothing allocated), then the real build. Weights for another architecture, or a
    /// config larger than its weights, are refused before gigabytes are allocated. Every loader goes through here.
    public static func load<M>(
        _ weights: any WeightSource, dtype: DType? = nil, device: Device = .cpu, _ make: (VarBuilder) throws -> M
    ) throws -> M {
        _ = try VarBuilder(checkingShapesOf: weights).build(make)
        return try VarBuilder(weights, dtype: dtype, device: device).build(make)
    }

    /// Builds a model and checks the checkpoint against it in one go.
    public func build<M>(_ make: (VarBuilder) throws -> M) throws -> M {
        let model = try make(self)
        try finish()
        return model
    }
}

/// What a VarBuilder tree shares: the source, the tensors handed out (by full name) and the problems found.
final class ParameterStore {
    let source: (any WeightSource)?
    let dtype: DType?
    let device: Device
    let generator: Generator?
    var tensors: [String: Tensor] = [:]
    var order: [String] = []
    var used: Set<String> = []
    var missing: [(key: String, shape: [Int])] = []
    var mismatched: [(key: String, checkpoint: [Int], model: [Int])] = []
    var readErrors: [any Error] = []
    /// False when only names and shapes are checked (`VarBuilder(checkingShapesOf:)`).
    let readsData: Bool

    init(source: (any WeightSource)?, dtype: DType?, device: Device, generator: Generator?, readsData: Bool = true) {
        self.source = source
        self.dtype = dtype
        self.device = device
        self.generator = generator
        self.readsData = readsData
    }

    func get(shape: [Int], key: String, aliases: [String], initializer: Initializer, required: Bool) -> Tensor? {
        if let existing = tensors[key] { return existing }  // shared (tied) weights are handed out once
        let tensor: Tensor
        if let source {
            guard let found = ([key] + aliases).first(where: { source.info($0) != nil }) else {
                if required { missing.append((key, shape)) }
                return required ? Tensor.zeros(shape, dtype: dtype ?? .float32, device: device) : nil
            }
            used.insert(found)
            let stored = source.info(found)!.shape
            guard stored == shape else {
                mismatched.append((key: found, checkpoint: stored, model: shape))
                return Tensor.zeros(shape, dtype: dtype ?? .float32, device: device)
            }
            if !readsData {
                tensor = Tensor.zeros(shape, dtype: dtype ?? .float32, device: device)
                tensors[key] = tensor
                order.append(key)
                return tensor
            }
            do {
                let loaded = try source.tensor(found)
                let target = dtype.map { loaded.dtype.isFloatingPoint ? $0 : loaded.dtype } ?? loaded.dtype
                tensor = loaded.dtype == target && device == .cpu ? loaded : loaded.to(dtype: target, device: device)
            } catch {
                readErrors.append(error)
                return Tensor.zeros(shape, dtype: dtype ?? .float32, device: device)
            }
        } else {
            tensor = make(shape, initializer)
        }
        tensors[key] = tensor
        order.append(key)
        return tensor
    }

    private func make(_ shape: [Int], _ initializer: Initializer) -> Tensor {
        let dtype = self.dtype ?? .float32
        guard generator != nil else { return Tensor.zeros(shape, dtype: dtype, device: device) }  // shapes only
        switch initializer {
        case .zeros: return Tensor.zeros(shape, dtype: dtype, device: device)
        case .ones: return Tensor.ones(shape, dtype: dtype, device: device)
        case .normal(let std):
            return (Tensor.randn(shape, generator: generator) * std).to(dtype: dtype, device: device)
        case .uniformFanIn(let fanIn):
            let bound = 1 / Double(max(fanIn, 1)).squareRoot()
            return (Tensor.rand(shape, generator: generator) * (2 * bound) - bound).to(dtype: dtype, device: device)
        }
    }
}

/// Errors of loading weights into a model. `description` is one line naming the file and the keys.
public enum WeightLoadingError: Error, CustomStringConvertible, Equatable {
    case noSuchFile(String)
    case noWeightsInFolder(String)
    case unknownFormat(String)
    case missingKey(String, origin: String)
    case duplicateKey(String, first: String, second: String)
    case mismatch(origin: String, missing: [(key: String, shape: [Int])], unused: [String],
                  mismatched: [(key: String, checkpoint: [Int], model: [Int])])

    public var description: String {
        switch self {
        case .noSuchFile(let path): return "\(path): no such file or folder"
        case .noWeightsInFolder(let path): return "\(path): the folder holds no .safetensors file"
        case .unknownFormat(let path):
            return "\(path): unknown weights format (expected .safetensors, .bin, .pt, .pth or .ckpt)"
        case .missingKey(let key, let origin): return "\(origin): no tensor named '\(key)'"
        case .duplicateKey(let key, let first, let second): return "'\(key)' is in both \(first) and \(second)"
        case .mismatch(let origin, let missing, let unused, let mismatched):
            // Every problem when the list is short; else the first two shape mismatches, the first missing and unused
            // key and how many more of each, so that a checkpoint for another architecture (hundreds of keys) still
            // gives one short line. Keys come from the file, so they are quoted as excerpts.
            func parts(_ shown: Int?) -> [String] {
                var parts: [String] = []
                let mismatchesShown = shown.map { mismatched.prefix($0) } ?? mismatched[...]
                for m in mismatchesShown {
                    parts.append("'\(excerpt(m.key))' has shape \(excerpt(shape: m.checkpoint)) in the checkpoint, "
                        + "the model expects \(excerpt(shape: m.model))")
                }
                if mismatchesShown.count < mismatched.count {
                    let more = mismatched.count - mismatchesShown.count
                    parts.append("\(more) more shape mismatch\(more == 1 ? "" : "es")")
                }
                func list(_ items: [String]) -> String {
                    let listed = shown.map { _ in items.prefix(1) } ?? items[...]
                    return listed.joined(separator: ", ") + (listed.count < items.count ? ", … (\(items.count - listed.count) more)" : "")
                }
                if !missing.isEmpty {
                    parts.append("\(missing.count) missing key\(missing.count == 1 ? "" : "s"): "
                        + list(missing.map { "\(excerpt($0.key)) \(excerpt(shape: $0.shape))" }))
                }
                if !unused.isEmpty {
                    parts.append("\(unused.count) unused key\(unused.count == 1 ? "" : "s"): " + list(unused.map { excerpt($0) }))
                }
                return parts
            }
            let all = parts(nil).joined(separator: "; ")
            return "\(origin) does not fit the model: " + (all.count <= 500 ? all : parts(2).joined(separator: "; "))
        }
    }

    public static func == (a: WeightLoadingError, b: WeightLoadingError) -> Bool { a.description == b.description }
}
