import Foundation
import NN
import Torch

/// The model part a LoRA module changes.
public enum LoRAPlace: String, Sendable, CaseIterable {
    case textEncoder = "text_encoder"
    case textEncoder2 = "text_encoder_2"
    case unet

    /// kohya's name prefix: `lora_te_` for the one text encoder of SD 1.x/2.x, `lora_te1_`/`lora_te2_` for SDXL's two,
    /// `lora_unet_`.
    public func kohyaPrefix(twoEncoders: Bool) -> String {
        switch self {
        case .textEncoder: twoEncoders ? "lora_te1_" : "lora_te_"
        case .textEncoder2: "lora_te2_"
        case .unet: "lora_unet_"
        }
    }
}

/// The names a LoRA file is written with: kohya's sd-scripts (`lora_te_..._q_proj.lora_down.weight`, `.lora_up.weight`,
/// `.alpha`; read by AUTOMATIC1111, ComfyUI and diffusers) or diffusers/PEFT (`text_encoder.<module>.lora_A.weight`,
/// `.lora_B.weight`; no alpha, so alpha/rank is folded into lora_B and alpha equals the rank).
public enum LoRAFormat: String, CaseIterable, Sendable, Codable {
    case kohya, peft
}

/// One module's low-rank update as a file holds it.
public struct LoRAModule {
    /// The module's name in the file (the keys without `.lora_down.weight` etc.).
    public let key: String
    public let place: LoRAPlace
    /// The module's path in the model: dotted (`text_model.encoder.layers.0.self_attn.q_proj`), or for kohya's names
    /// with underscores for dots (`text_model_encoder_layers_0_self_attn_q_proj`).
    public let path: String
    public let flattened: Bool
    /// [rank, in] or [rank, in, k, k] (conv), and [out, rank] or [out, rank, 1, 1].
    public let down: Tensor
    public let up: Tensor
    /// nil: the rank (PEFT files carry none).
    public let alpha: Double?

    public var rank: Int { down.size(0) }
    /// alpha / rank.
    public var scale: Double { (alpha ?? Double(rank)) / Double(rank) }

    /// scale · (alpha/rank) · up · down in float32, shaped as `weightShape` (a [out, in, k, k] conv weight takes a conv
    /// LoRA's [out, in·k·k] product, or a linear LoRA's on a 1x1 conv).
    func delta(scale factor: Double, weightShape: [Int]) -> Tensor {
        let product = up.to(.float32).flatten(from: 1).matmul(down.to(.float32).flatten(from: 1))
        return (product * (factor * scale)).reshape(weightShape)
    }
}

/// A LoRA file read whole: kohya's names (`lora_te_`, `lora_te1_`, `lora_te2_`, `lora_unet_` with `lora_down`,
/// `lora_up`, `alpha`), diffusers/PEFT's (`text_encoder.`, `text_encoder_2.`, `unet.` with `lora_A`, `lora_B`, and an
/// optional `.alpha`), or older diffusers' (`lora_linear_layer.down`/`.up`). Every problem is a one-line error
/// naming the file and the key.
public struct LoRAFile {
    public let url: URL
    public let modules: [LoRAModule]
    public let metadata: [String: String]
    /// "kohya", "peft" or "diffusers (lora_linear_layer)"; several joined with "+" when a file mixes them.
    public let format: String

    public init(_ url: URL) throws {
        let path = url.path
        func fail(_ message: String) -> StableDiffusionError { .invalidArgument("\(path): \(message)") }
        guard FileManager.default.fileExists(atPath: path) else { throw fail("no such LoRA file") }
        guard url.pathExtension == "safetensors" else { throw fail("a LoRA file must be .safetensors") }
        let file: SafeTensorsFile
        do { file = try SafeTensorsFile(url: url) } catch { throw StableDiffusionError.invalidArgument("\(error)") }
        self.url = url
        metadata = file.metadata
        // Each tensor by module and role.
        let roles: [(suffix: String, role: String, style: String)] = [
            (".lora_down.weight", "down", "kohya"), (".lora_up.weight", "up", "kohya"), (".alpha", "alpha", ""),
            (".lora_A.weight", "down", "peft"), (".lora_B.weight", "up", "peft"),
            (".lora_linear_layer.down.weight", "down", "diffusers (lora_linear_layer)"),
            (".lora_linear_layer.up.weight", "up", "diffusers (lora_linear_layer)"),
        ]
        var groups: [String: [String: String]] = [:]  // module -> role -> full key
        var styles: [String: String] = [:]
        var order: [String] = []
        for name in file.names {
            guard let match = roles.first(where: { name.hasSuffix($0.suffix) }) else {
                throw fail("'\(excerpt(name, limit: 120))' is not a LoRA tensor (expected lora_down/lora_up/alpha, lora_A/lora_B or lora_linear_layer.down/up)")
            }
            let module = String(name.dropLast(match.suffix.count))
            if groups[module] == nil { order.append(module) }
            groups[module, default: [:]][match.role] = name
            if !match.style.isEmpty { styles[module] = match.style }
        }
        guard !order.isEmpty else { throw fail("holds no LoRA tensors") }
        var modules: [LoRAModule] = []
        for module in order {
            let roles = groups[module]!
            guard let downKey = roles["down"], let upKey = roles["up"] else {
                throw fail("'\(excerpt(module, limit: 120))' has \(roles["down"] == nil ? "no down (lora_down/lora_A)" : "no up (lora_up/lora_B)") weight")
            }
            let down = try Tensor(file.tensorData(downKey)), up = try Tensor(file.tensorData(upKey))
            guard [2, 4].contains(down.rank), up.rank == down.rank else {
                throw fail("'\(excerpt(downKey, limit: 120))' has shape \(excerpt(shape: down.shape)) and its up weight \(excerpt(shape: up.shape)): not a LoRA pair")
            }
            guard down.size(0) == up.size(1) else {
                throw fail("'\(excerpt(module, limit: 120))': rank mismatch: the down weight has rank \(down.size(0)), the up weight \(up.size(1))")
            }
            var alpha: Double?
            if let alphaKey = roles["alpha"] {
                let value = try Tensor(file.tensorData(alphaKey))
                guard value.elementCount == 1, value.to(.float64).item().isFinite else {
                    throw fail("'\(excerpt(alphaKey, limit: 120))' is not one finite number")
                }
                alpha = value.to(.float64).item()
            }
            guard let (place, path, flattened) = Self.place(of: module) else {
                throw fail("'\(excerpt(module, limit: 120))' names no model part (expected lora_te_, lora_te1_, lora_te2_, lora_unet_, or text_encoder., text_encoder_2., unet.)")
            }
            modules.append(LoRAModule(key: module, place: place, path: path, flattened: flattened, down: down, up: up, alpha: alpha))
        }
        self.modules = modules
        format = Array(Set(order.compactMap { styles[$0] })).sorted().joined(separator: "+")
    }

    /// The part and path a module name points at.
    static func place(of module: String) -> (LoRAPlace, String, Bool)? {
        for (prefix, place) in [("lora_te1_", LoRAPlace.textEncoder), ("lora_te2_", .textEncoder2), ("lora_te_", .textEncoder),
                                ("lora_unet_", .unet)] where module.hasPrefix(prefix) {
            return (place, String(module.dropFirst(prefix.count)), true)
        }
        for place in [LoRAPlace.textEncoder2, .textEncoder, .unet] where module.hasPrefix(place.rawValue + ".") {
            return (place, String(module.dropFirst(place.rawValue.count + 1)), false)
        }
        return nil
    }

    /// Whether the file uses kohya's names for one text encoder (`lora_te_`: SD 1.x/2.x).
    var hasSingleEncoderKohyaNames: Bool { modules.contains { $0.key.hasPrefix("lora_te_") } }
    /// Whether it names SDXL's encoders (`lora_te1_`, `lora_te2_`, `text_encoder_2.`).
    var hasSDXLNames: Bool { modules.contains { $0.key.hasPrefix("lora_te1_") || $0.place == .textEncoder2 } }

    /// The model the file says it is for (kohya's `ss_base_model_version`, `modelspec.architecture`), if it says.
    public var statedBase: String? {
        metadata["modelspec.architecture"].map { String($0.split(separator: "/").first ?? "") } ?? metadata["ss_base_model_version"]
    }

    /// The model the file is for, from its metadata, else from its names and widths.
    public var baseArchitecture: String {
        if let stated = statedBase, !stated.isEmpty { return stated }
        if hasSDXLNames { return "SDXL" }
        let width = modules.first { $0.place == .textEncoder && $0.path.hasSuffix("q_proj") }?.down.size(1)
            ?? modules.first { $0.place == .textEncoder }?.down.size(1)
        switch width {
        case 768: return "SD 1.x"
        case 1024: return "SD 2.x"
        case .none: return modules.contains { $0.place == .unet } ? "unknown (UNet only)" : "unknown"
        default: return "unknown (text encoder width \(width!))"
        }
    }
}

/// One `--lora FILE[:SCALE]`.
public struct LoRASpec: Sendable, Equatable {
    public var path: String
    public var scale: Double

    public init(path: String, scale: Double = 1) {
        self.path = path
        self.scale = scale
    }

    /// "FILE" (scale 1) or "FILE:SCALE".
    public init(spec: String) throws {
        if let colon = spec.lastIndex(of: ":"), let value = Double(spec[spec.index(after: colon)...]) {
            guard value.isFinite else { throw StableDiffusionError.invalidArgument("\(excerpt(spec, limit: 200)): the scale is not a finite number") }
            self.init(path: String(spec[..<colon]), scale: value)
        } else {
            self.init(path: spec)
        }
        guard !path.isEmpty else { throw StableDiffusionError.invalidArgument("\(excerpt(spec, limit: 200)): no file given") }
    }

    public var description: String { "\(path):\(scale)" }
}

extension StableDiffusionPipeline {
    /// Merges each LoRA, times its scale, into the weights of the model's text encoder(s) and UNet (scale · alpha/rank
    /// · up · down added in float32, then stored in the weights' type): several add up. Everything is checked before
    /// any weight changes: a key that matches no module, a LoRA for another architecture, shapes that do not fit.
    public func mergeLoRAs(_ specs: [LoRASpec]) throws {
        var updates: [(weight: Tensor, delta: Tensor)] = []
        for spec in specs {
            let file = try LoRAFile(URL(fileURLWithPath: spec.path))
            updates += try LoRATargets(textEncoder: textEncoder, textEncoder2: textEncoder2, unet: unet, architecture: architecture)
                .updates(file, scale: spec.scale)
        }
        LoRATargets.apply(updates)
    }
}

/// The weights a LoRA can change, by module path, per place.
public struct LoRATargets {
    let weights: [LoRAPlace: (dotted: [String: Tensor], flattened: [String: Tensor])]
    let twoEncoders: Bool
    let modelName: String

    public init(textEncoder: (any Module)?, textEncoder2: (any Module)?, unet: (any Module)?, architecture: ModelArchitecture) {
        func index(_ module: (any Module)?) -> (dotted: [String: Tensor], flattened: [String: Tensor])? {
            guard let module else { return nil }
            var dotted: [String: Tensor] = [:], flattened: [String: Tensor] = [:]
            for (name, tensor) in module.namedParameters where name.hasSuffix(".weight") {
                let path = String(name.dropLast(".weight".count))
                dotted[path] = tensor
                flattened[path.replacingOccurrences(of: ".", with: "_")] = tensor
            }
            return (dotted, flattened)
        }
        var weights: [LoRAPlace: (dotted: [String: Tensor], flattened: [String: Tensor])] = [:]
        weights[.textEncoder] = index(textEncoder)
        weights[.textEncoder2] = index(textEncoder2)
        weights[.unet] = index(unet)
        self.weights = weights
        twoEncoders = architecture == .sdxl
        modelName = architecture.name
    }

    /// Each weight `file` changes and its delta (times `scale`), checked.
    public func updates(_ file: LoRAFile, scale: Double) throws -> [(weight: Tensor, delta: Tensor)] {
        let path = file.url.path
        func other(_ why: String) -> StableDiffusionError {
            .invalidArgument("\(path) is a LoRA for \(file.baseArchitecture) (\(why)), and the model is \(modelName)")
        }
        if twoEncoders, file.hasSingleEncoderKohyaNames { throw other("lora_te_ keys: one text encoder") }
        if !twoEncoders, file.hasSDXLNames { throw other("keys for two text encoders") }
        var updates: [(weight: Tensor, delta: Tensor)] = []
        for module in file.modules {
            guard let index = weights[module.place] else {
                throw StableDiffusionError.invalidArgument("\(path): '\(excerpt(module.key, limit: 120))' is for \(module.place.rawValue), which the model lacks")
            }
            let found = module.flattened ? index.flattened[module.path] : index.dotted[module.path]
            guard let weight = found else {
                throw StableDiffusionError.invalidArgument(
                    "\(path): '\(excerpt(module.key, limit: 120))' matches no module of the model's \(module.place.rawValue)")
            }
            let shape = weight.shape
            let fits = shape.count >= 2 && shape[0] == module.up.size(0)
                && shape.dropFirst().reduce(1, *) == module.down.shape.dropFirst().reduce(1, *)
                && (module.down.rank == 2 || shape == [shape[0], module.down.size(1), module.down.size(2), module.down.size(3)])
            guard fits else {
                throw other("'\(excerpt(module.key, limit: 120))' changes a \(excerpt(shape: [module.up.size(0)] + Array(module.down.shape.dropFirst()))) weight, the model's is \(excerpt(shape: shape))")
            }
            updates.append((weight, module.delta(scale: scale, weightShape: shape)))
        }
        return updates
    }

    /// Adds the deltas to their weights, in place (in float32, stored back in each weight's type).
    public static func apply(_ updates: [(weight: Tensor, delta: Tensor)]) {
        withNoGrad {
            for (weight, delta) in updates {
                weight.copy_((weight.to(.float32) + delta.to(weight.device)).to(weight.dtype))
            }
        }
    }
}

extension LoRAFile {
    /// Module kinds by the end of their names, longest first (`self_attn_q_proj` is q_proj, `ff_net_0_proj` ff.net.0.proj).
    static let kinds = ["ff_net_0_proj", "ff_net_2", "to_out_0", "conv_shortcut", "time_emb_proj", "text_projection", "q_proj", "k_proj",
                        "v_proj", "out_proj", "proj_in", "proj_out", "to_q", "to_k", "to_v", "fc1", "fc2", "conv1", "conv2", "conv"]

    /// What `inspect` says of the file: its format, the model it is for, the ranks and alphas, and the modules it
    /// changes per model part and kind.
    public var summary: [String] {
        func counts<T: Hashable & Comparable>(_ values: [T]) -> String {
            Dictionary(grouping: values, by: { $0 }).sorted { $0.key < $1.key }.map { "\($0.key) (\($0.value.count))" }
                .joined(separator: ", ")
        }
        var lines = [
            "LoRA: \(format) names, \(modules.count) modules, for \(baseArchitecture)",
            "rank: \(counts(modules.map(\.rank)))",
            "alpha: " + (modules.allSatisfy { $0.alpha == nil } ? "none stored (= rank)"
                : counts(modules.map { $0.alpha.map { String($0) } ?? "none (= rank)" })),
        ]
        for place in LoRAPlace.allCases {
            let here = modules.filter { $0.place == place }
            guard !here.isEmpty else { continue }
            let kinds = here.map { module -> String in
                let flat = module.path.replacingOccurrences(of: ".", with: "_")
                let kind = Self.kinds.first { flat == $0 || flat.hasSuffix("_" + $0) } ?? String(flat.split(separator: "_").last ?? "")
                return module.down.rank == 4 ? "\(kind) (conv \(module.down.size(2))x\(module.down.size(3)))" : kind
            }
            lines.append("\(place.rawValue): \(counts(kinds))")
        }
        for key in ["ss_base_model_version", "ss_network_dim", "ss_network_alpha", "modelspec.architecture", "modelspec.title"] {
            if let value = metadata[key] { lines.append("\(key): \(excerpt(value, limit: 120))") }
        }
        return lines
    }
}
