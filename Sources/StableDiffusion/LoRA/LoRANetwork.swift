import Foundation
import NN
import Torch

/// Trainable LoRA adapters on text encoders' linear layers: each targeted `Linear` of every encoder block gets a
/// `LowRankAdapter` (its weight stays as it is, frozen), and the adapters' `down` and `up` are the only trained
/// tensors. Written with kohya's or PEFT's names (`LoRAFormat`), as `LoRAFile` reads them back.
public final class LoRANetwork {
    /// The linear layers a network can target, by their name in a CLIP encoder block.
    public static let targetNames = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

    public struct Entry {
        public let place: LoRAPlace
        /// The module's path in the encoder (`text_model.encoder.layers.0.self_attn.q_proj`).
        public let path: String
        public let layer: Linear
        public let adapter: LowRankAdapter
    }

    public let entries: [Entry]
    public let rank: Int
    public let alpha: Double
    /// Whether the model has two text encoders (SDXL: kohya's `lora_te1_`/`lora_te2_`).
    public let twoEncoders: Bool

    /// Attaches fresh adapters (`down` from `generator`, in entry order; `up` zero) to the `targets` of each encoder,
    /// on the device of its weights. `targets`: names from `targetNames`. Dropout masks are drawn from `generator` too.
    public init(encoders: [(place: LoRAPlace, model: CLIPTextModel)], twoEncoders: Bool, rank: Int, alpha: Double,
                dropout: Double, targets: [String], generator: Generator) {
        var entries: [Entry] = []
        for (place, model) in encoders {
            for (path, layer) in model.linearLayers where targets.contains(String(path.split(separator: ".").last!)) {
                let adapter = LowRankAdapter(
                    inFeatures: layer.weight.size(1), outFeatures: layer.weight.size(0), rank: rank, alpha: alpha,
                    dropout: dropout, generator: generator, device: layer.weight.device)
                adapter.dropoutGenerator = generator
                layer.adapter = adapter
                entries.append(Entry(place: place, path: path, layer: layer, adapter: adapter))
            }
        }
        self.entries = entries
        self.rank = rank
        self.alpha = alpha
        self.twoEncoders = twoEncoders
    }

    /// The trained tensors: each entry's down then up.
    public var parameters: [Tensor] { entries.flatMap { [$0.adapter.down, $0.adapter.up] } }

    /// The module's name in `format` (without `.lora_down.weight` etc.).
    public func name(_ entry: Entry, _ format: LoRAFormat) -> String {
        switch format {
        case .kohya: entry.place.kohyaPrefix(twoEncoders: twoEncoders) + entry.path.replacingOccurrences(of: ".", with: "_")
        case .peft: "\(entry.place.rawValue).\(entry.path)"
        }
    }

    /// The tensors as a file holds them, in `dtype`: kohya's `lora_down`, `lora_up` and `alpha` (a scalar); or PEFT's
    /// `lora_A` and `lora_B` with alpha/rank folded into `lora_B` (PEFT files carry no alpha, and their readers take
    /// alpha = rank), so every reader computes the same delta.
    public func stateDict(_ format: LoRAFormat, dtype: DType = .float32) -> [String: Tensor] {
        var out: [String: Tensor] = [:]
        for entry in entries {
            let name = name(entry, format)
            let down = entry.adapter.down.detach().to(dtype: dtype, device: .cpu)
            let up = entry.adapter.up.detach()
            switch format {
            case .kohya:
                out["\(name).lora_down.weight"] = down
                out["\(name).lora_up.weight"] = up.to(dtype: dtype, device: .cpu)
                out["\(name).alpha"] = Tensor.full([], alpha, dtype: dtype)
            case .peft:
                out["\(name).lora_A.weight"] = down
                out["\(name).lora_B.weight"] = (up.to(.float32) * entry.adapter.scale).to(dtype: dtype, device: .cpu)
            }
        }
        return out
    }

    /// Copies the adapters' tensors from a kohya-named state (a checkpoint's `stateDict(.kohya)`), exactly; every
    /// missing, unexpected or misshapen key is an error naming `origin`.
    public func load(_ tensors: [String: Tensor], origin: String) throws {
        var expected: [String: Tensor] = [:]
        for entry in entries {
            let name = name(entry, .kohya)
            expected["\(name).lora_down.weight"] = entry.adapter.down
            expected["\(name).lora_up.weight"] = entry.adapter.up
        }
        for (key, tensor) in tensors where !key.hasSuffix(".alpha") {
            guard let own = expected[key] else {
                throw StableDiffusionError.invalidArgument("\(origin): '\(excerpt(key, limit: 120))' is not a module of this run's LoRA")
            }
            guard own.shape == tensor.shape else {
                throw StableDiffusionError.invalidArgument(
                    "\(origin): '\(excerpt(key, limit: 120))' has shape \(excerpt(shape: tensor.shape)), the run's LoRA \(excerpt(shape: own.shape))")
            }
        }
        if let missing = expected.keys.sorted().first(where: { tensors[$0] == nil }) {
            throw StableDiffusionError.invalidArgument("\(origin): no tensor '\(excerpt(missing, limit: 120))'")
        }
        withNoGrad { for (key, own) in expected { own.copy_(tensors[key]!) } }
    }

    /// Removes the adapters from their layers (the encoders compute as before the network was attached).
    public func detach() { entries.forEach { $0.layer.adapter = nil } }

    /// How many numbers the adapters hold.
    public var parameterCount: Int { parameters.reduce(0) { $0 + $1.elementCount } }
}

extension CLIPTextModel {
    /// The linear layers of the encoder blocks by their path in the checkpoint
    /// (`text_model.encoder.layers.N.self_attn.q_proj`, `k_proj`, `v_proj`, `out_proj`, `mlp.fc1`, `mlp.fc2`).
    public var linearLayers: [(path: String, layer: Linear)] {
        var out: [(path: String, layer: Linear)] = []
        for (index, block) in layers.enumerated() {
            let base = "text_model.encoder.layers.\(index)"
            if case .separate(let q, let k, let v) = block.selfAttention.input {
                out += [("\(base).self_attn.q_proj", q), ("\(base).self_attn.k_proj", k), ("\(base).self_attn.v_proj", v)]
            }
            out += [("\(base).self_attn.out_proj", block.selfAttention.output), ("\(base).mlp.fc1", block.fc1),
                    ("\(base).mlp.fc2", block.fc2)]
        }
        return out
    }
}
