import Foundation
import NN
import Torch

/// A whole Stable Diffusion model in one original-layout checkpoint (the CompVis/Stability "LDM" files:
/// `v1-5-pruned-emaonly.safetensors`, `v2-1_768-ema-pruned.ckpt`, `sd_xl_base_1.0.safetensors`), seen as the
/// components of a diffusers folder without copying it: each component is a `RenamedWeights` over the one opened
/// file, its keys renamed (and fused or 1x1-convolution tensors cut or reshaped) to diffusers' and transformers'
/// names on demand. The layout comes from the keys, as diffusers' single-file loader decides it:
/// `cond_stage_model.transformer.*` (CLIP ViT-L) is SD 1.x, `cond_stage_model.model.*` (OpenCLIP ViT-H, its fused
/// `attn.in_proj_*` split into q/k/v, the blocks past the config's `num_hidden_layers` dropped: SD 2 conditions on
/// the penultimate layer) SD 2.x, `conditioner.embedders.0/1.*` (CLIP ViT-L and OpenCLIP bigG, whose
/// `text_projection` is transposed) SDXL base. The configs come from elsewhere (a diffusers folder of the same
/// architecture); the maps follow them (blocks, layers per block). `.ckpt`/`.pt`/`.pth`/`.bin` are read by the safe
/// unpickler (no code runs; a `state_dict` entry is taken). EMA weights (`model_ema.*`) are used for the UNet when
/// present unless `useEMA` is false.
public struct SingleFileCheckpoint {
    public enum Layout: String, Sendable {
        case sd1 = "SD 1.x", sd2 = "SD 2.x", sdxl = "SDXL"
        public var architecture: ModelArchitecture { self == .sdxl ? .sdxl : .sd }
    }

    public static let extensions: Set<String> = ["safetensors", "ckpt", "pt", "pth", "bin"]

    public let url: URL
    public let layout: Layout
    let source: any WeightSource
    let keys: Set<String>
    /// Every tensor of the file under its own names (opened once: a `.ckpt` is not decoded again).
    public var weights: any WeightSource { source }
    /// Whether the UNet is read from the `model_ema.*` copy.
    public let usesEMA: Bool

    static let unetPrefix = "model.diffusion_model.", vaePrefix = "first_stage_model."

    public init(url: URL, useEMA: Bool = true) throws {
        guard Self.extensions.contains(url.pathExtension) else {
            throw StableDiffusionError.invalidArgument(
                "\(url.path): a single-file model is a .safetensors, .ckpt, .pt, .pth or .bin file (or give a diffusers folder)")
        }
        try self.init(source: try Weights.open(url), url: url, useEMA: useEMA)
    }

    /// The checkpoint whose tensors `source` holds (`url` names it in messages): a file opened, or weights about to
    /// be written, seen as a reader will see them.
    public init(source: any WeightSource, url: URL, useEMA: Bool = true) throws {
        self.url = url
        func fail(_ message: String) -> StableDiffusionError { .invalidArgument("\(url.path): \(message)") }
        let keys = Set(source.keys)
        func has(_ prefix: String) -> Bool { keys.contains { $0.hasPrefix(prefix) } }
        if keys.contains(where: { $0.hasPrefix("lora_") || $0.contains(".lora_down.") || $0.contains(".lora_A.") || $0.contains(".lora_up.") }) {
            throw fail("a LoRA file, not a model (keys like '\(excerpt(keys.sorted().first!, limit: 80))'): give the base model as --model")
        }
        let hasUNet = has(Self.unetPrefix), hasVAE = has(Self.vaePrefix)
        let found: Layout? =
            has("conditioner.embedders.1.model.") ? .sdxl
            : has("cond_stage_model.model.") ? .sd2 : has("cond_stage_model.transformer.") ? .sd1 : nil
        guard let found, hasUNet, hasVAE else {
            if hasUNet || hasVAE || found != nil {
                let parts = [hasUNet ? "a UNet" : nil, hasVAE ? "a VAE" : nil, found != nil ? "a text encoder" : nil].compactMap { $0 }
                throw fail("holds only \(parts.joined(separator: " and ")) (model.diffusion_model.*, first_stage_model.*, cond_stage_model.* or conditioner.*): a single-file model needs all three")
            }
            if has("down_blocks.") || has("encoder.down_blocks.") || has("text_model.") {
                throw fail("one diffusers component's weights, not a whole model: give its folder, or the model's diffusers folder")
            }
            let some = keys.sorted().prefix(3).map { "'\(excerpt($0, limit: 60))'" }.joined(separator: ", ")
            throw fail("unknown architecture: not an SD 1.x, SD 2.x or SDXL checkpoint (\(keys.count) keys\(some.isEmpty ? "" : ", e.g. \(some)"))")
        }
        self.source = source
        self.keys = keys
        layout = found
        usesEMA = useEMA && has("model_ema.")
    }

    func fail(_ message: String) -> StableDiffusionError { .invalidArgument("\(url.path): \(message)") }

    /// The file's keys under `prefix`, each renamed by `rename` (nil: a key this layout does not know, an error
    /// naming it; "" : a key dropped on purpose).
    func component(_ prefix: String, _ what: String, _ rename: (String, [Int]) -> [(String, WeightTransform)]?) throws -> RenamedWeights {
        var entries: [String: (key: String, transform: WeightTransform)] = [:]
        for key in keys.sorted() where key.hasPrefix(prefix) {
            let shape = source.info(key)?.shape ?? []
            guard let renamed = rename(String(key.dropFirst(prefix.count)), shape) else {
                throw fail("'\(excerpt(key, limit: 100))' is not a key of the \(layout.rawValue) \(what) layout")
            }
            for (name, transform) in renamed { entries[name] = (key, transform) }
        }
        return RenamedWeights(source, entries: entries)
    }

    // MARK: UNet

    /// The UNet under diffusers' names, for a UNet of `config` (the EMA copy when `usesEMA`).
    public func unet(config: UNet2DConditionConfig) throws -> RenamedWeights {
        let n = config.block_out_channels.count
        let layers = config.layers_per_block.values(count: n)
        var input: [Int: (block: Int, layer: Int?)] = [:], output: [Int: (block: Int, layer: Int)] = [:]
        var k = 1
        for i in 0..<n {
            for j in 0..<layers[i] { input[k] = (i, j); k += 1 }
            if i < n - 1 { input[k] = (i, nil); k += 1 }
        }
        k = 0
        for (i, count) in layers.reversed().enumerated() { for j in 0...count { output[k] = (i, j); k += 1 } }
        let resnet = [("in_layers.0.", "norm1."), ("in_layers.2.", "conv1."), ("emb_layers.1.", "time_emb_proj."),
                      ("out_layers.0.", "norm2."), ("out_layers.3.", "conv2."), ("skip_connection.", "conv_shortcut.")]
        func resnetName(_ rest: Substring) -> String? {
            resnet.first { rest.hasPrefix($0.0) }.map { $0.1 + rest.dropFirst($0.0.count) }
        }
        /// "N.M.rest" -> (N, M, rest)
        func split(_ s: Substring) -> (Int, Int, Substring)? {
            let parts = s.split(separator: ".", maxSplits: 2)
            guard parts.count == 3, let a = Int(parts[0]), let b = Int(parts[1]) else { return nil }
            return (a, b, parts[2])
        }
        let fixed = [("time_embed.0.", "time_embedding.linear_1."), ("time_embed.2.", "time_embedding.linear_2."),
                     ("label_emb.0.0.", "add_embedding.linear_1."), ("label_emb.0.2.", "add_embedding.linear_2."),
                     ("input_blocks.0.0.", "conv_in."), ("out.0.", "conv_norm_out."), ("out.2.", "conv_out.")]
        func rename(_ key: String) -> String? {
            if let (old, new) = fixed.first(where: { key.hasPrefix($0.0) }) { return new + key.dropFirst(old.count) }
            if key.hasPrefix("input_blocks."), let (index, part, rest) = split(key.dropFirst("input_blocks.".count)),
                let (i, j) = input[index]
            {
                guard let j else { return part == 0 && rest.hasPrefix("op.") ? "down_blocks.\(i).downsamplers.0.conv." + rest.dropFirst(3) : nil }
                if part == 0 { return resnetName(rest).map { "down_blocks.\(i).resnets.\(j).\($0)" } }
                return part == 1 ? "down_blocks.\(i).attentions.\(j).\(rest)" : nil
            }
            if key.hasPrefix("middle_block.") {
                let parts = key.dropFirst("middle_block.".count).split(separator: ".", maxSplits: 1)
                guard parts.count == 2 else { return nil }
                switch parts[0] {
                case "0": return resnetName(parts[1]).map { "mid_block.resnets.0.\($0)" }
                case "1": return "mid_block.attentions.0.\(parts[1])"
                case "2": return resnetName(parts[1]).map { "mid_block.resnets.1.\($0)" }
                default: return nil
                }
            }
            if key.hasPrefix("output_blocks."), let (index, part, rest) = split(key.dropFirst("output_blocks.".count)),
                let (i, j) = output[index]
            {
                if part == 0 { return resnetName(rest).map { "up_blocks.\(i).resnets.\(j).\($0)" } }
                if rest.hasPrefix("conv.") { return "up_blocks.\(i).upsamplers.0.\(rest)" }
                return part == 1 ? "up_blocks.\(i).attentions.\(j).\(rest)" : nil
            }
            return nil
        }
        var entries: [String: (key: String, transform: WeightTransform)] = [:]
        for key in keys.sorted() where key.hasPrefix(Self.unetPrefix) {
            guard let name = rename(String(key.dropFirst(Self.unetPrefix.count))) else {
                throw fail("'\(excerpt(key, limit: 100))' does not fit the UNet of the config (\(n) blocks, \(layers) layers per block)")
            }
            // diffusers' EMA names: "model_ema." + the key past "model." with its dots removed.
            let ema = "model_ema." + key.split(separator: ".").dropFirst().joined()
            entries[name] = (usesEMA && keys.contains(ema) ? ema : key, .none)
        }
        return RenamedWeights(source, entries: entries)
    }

    // MARK: VAE

    /// The VAE under diffusers' names, for a VAE of `config`.
    public func vae(config: AutoencoderKLConfig) throws -> RenamedWeights {
        let n = config.block_out_channels.count
        let rules: [(String, String)] = [
            ("mid.block_1.", "mid_block.resnets.0."), ("mid.block_2.", "mid_block.resnets.1."),
            ("mid.attn_1.norm.", "mid_block.attentions.0.group_norm."), ("mid.attn_1.q.", "mid_block.attentions.0.to_q."),
            ("mid.attn_1.k.", "mid_block.attentions.0.to_k."), ("mid.attn_1.v.", "mid_block.attentions.0.to_v."),
            ("mid.attn_1.proj_out.", "mid_block.attentions.0.to_out.0."), ("norm_out.", "conv_norm_out."),
            ("conv_in.", "conv_in."), ("conv_out.", "conv_out."),
        ]
        return try component(Self.vaePrefix, "VAE") { key, shape in
            let whole = ["quant_conv.", "post_quant_conv."]
            if whole.contains(where: { key.hasPrefix($0) }) { return [(key, .none)] }
            let parts = key.split(separator: ".", maxSplits: 1)
            guard parts.count == 2, parts[0] == "encoder" || parts[0] == "decoder" else { return nil }
            let side = String(parts[0]), rest = String(parts[1])
            var name: String?
            if let (old, new) = rules.first(where: { rest.hasPrefix($0.0) }) { name = new + rest.dropFirst(old.count) }
            let p = rest.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
            if name == nil, p.count >= 4, let i = Int(p[1]), i < n {
                let tail = p.dropFirst(3).joined(separator: ".")
                switch (side, p[0], p[2]) {
                case ("encoder", "down", "downsample"): name = "down_blocks.\(i).downsamplers.0.\(tail)"
                case ("decoder", "up", "upsample"): name = "up_blocks.\(n - 1 - i).upsamplers.0.\(tail)"
                case ("encoder", "down", "block"), ("decoder", "up", "block"):
                    if p.count >= 5, let j = Int(p[3]) {
                        let block = side == "encoder" ? "down_blocks.\(i)" : "up_blocks.\(n - 1 - i)"
                        name = "\(block).resnets.\(j).\(p.dropFirst(4).joined(separator: "."))"
                    }
                default: break
                }
            }
            guard var name else { return nil }
            name = name.replacingOccurrences(of: "nin_shortcut.", with: "conv_shortcut.")
            let squeeze = name.contains("mid_block.attentions.0.to_") && shape.count == 4
            return [("\(side).\(name)", squeeze ? .squeeze : .none)]
        }
    }

    // MARK: Text encoders

    /// The first text encoder (CLIP ViT-L on SD 1.x and SDXL, OpenCLIP ViT-H on SD 2.x) under transformers' names.
    public func textEncoder(config: CLIPTextConfig) throws -> RenamedWeights {
        switch layout {
        case .sd1: return try clip("cond_stage_model.transformer.")
        case .sd2: return try openCLIP("cond_stage_model.model.", layers: config.num_hidden_layers, projection: false)
        case .sdxl: return try clip("conditioner.embedders.0.transformer.")
        }
    }

    /// SDXL's second text encoder (OpenCLIP bigG with its projection).
    public func textEncoder2(config: CLIPTextConfig) throws -> RenamedWeights {
        try openCLIP("conditioner.embedders.1.model.", layers: config.num_hidden_layers, projection: true)
    }

    func clip(_ prefix: String) throws -> RenamedWeights {
        try component(prefix, "CLIP text encoder") { key, _ in
            let name = key.hasPrefix("text_model.") ? key : "text_model." + key
            return name == "text_model.embeddings.position_ids" ? [] : [(name, .none)]
        }
    }

    func openCLIP(_ prefix: String, layers: Int, projection: Bool) throws -> RenamedWeights {
        let block = [("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("attn.out_proj.", "self_attn.out_proj."),
                     ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2.")]
        return try component(prefix, "OpenCLIP text encoder") { key, _ in
            switch key {
            case "token_embedding.weight": return [("text_model.embeddings.token_embedding.weight", .none)]
            case "positional_embedding": return [("text_model.embeddings.position_embedding.weight", .none)]
            case "ln_final.weight", "ln_final.bias": return [("text_model.final_layer_norm." + key.dropFirst("ln_final.".count), .none)]
            case "text_projection": return projection ? [("text_projection.weight", .transpose)] : []
            case "logit_scale": return []
            default: break
            }
            guard key.hasPrefix("transformer.resblocks.") else { return nil }
            let parts = key.dropFirst("transformer.resblocks.".count).split(separator: ".", maxSplits: 1)
            guard parts.count == 2, let i = Int(parts[0]) else { return nil }
            guard i < layers else { return [] }  // SD 2.x: the last block, which the penultimate-layer conditioning skips
            let layer = "text_model.encoder.layers.\(i)."
            if parts[1] == "attn.in_proj_weight" || parts[1] == "attn.in_proj_bias" {
                let kind = parts[1].hasSuffix("weight") ? "weight" : "bias"
                return ["q_proj", "k_proj", "v_proj"].enumerated().map { ("\(layer)self_attn.\($1).\(kind)", .chunk(index: $0, count: 3)) }
            }
            guard let (old, new) = block.first(where: { parts[1].hasPrefix($0.0) }) else { return nil }
            return [(layer + new + parts[1].dropFirst(old.count), .none)]
        }
    }
}

extension SingleFileCheckpoint {
    /// A config folder for this file must be a diffusers model of its architecture.
    public func checkConfigFolder(_ folder: URL) throws {
        try checkConfigFolder(folder, index: try ModelIndex.read(folder: folder))
    }

    func checkConfigFolder(_ folder: URL, index: ModelIndex) throws {
        guard layout.architecture == index.architecture else {
            throw StableDiffusionError.invalidArgument(
                "\(url.path) is an \(layout.rawValue) checkpoint, and the config folder \(folder.path) is a \(index.architecture.name) model")
        }
    }
}

extension ModelWriter {
    /// A diffusers folder at `out` (which must not exist): `configFolder` copied without its weights files, and each
    /// component's weights (diffusers' names) as its `model.safetensors` or `diffusion_pytorch_model.safetensors`,
    /// each tensor through `transform` (a dtype cast, or as stored) and written one at a time; `finish` may change
    /// the folder before it is moved into place (the scheduler's prediction type). Built beside `out` under a
    /// temporary name and renamed into place, so `out` is never half written.
    public static func writeDiffusersFolder(
        configFolder: URL, components: [(name: String, weights: any WeightSource)], to out: URL,
        transform: (Tensor) -> Tensor = { $0 }, finish: (URL) throws -> Void = { _ in }
    ) throws {
        let fm = FileManager.default
        guard !fm.fileExists(atPath: out.path) else { throw StableDiffusionError.invalidArgument("\(out.path): already exists") }
        let partial = out.deletingLastPathComponent().appendingPathComponent(".\(out.lastPathComponent).partial-\(UUID().uuidString)")
        try fm.copyItem(at: configFolder, to: partial)
        do {
            let weightExtensions: Set<String> = ["safetensors", "bin", "ckpt", "pt", "pth"]
            if let files = fm.enumerator(at: partial, includingPropertiesForKeys: nil) {
                for case let file as URL in files where weightExtensions.contains(file.pathExtension) { try fm.removeItem(at: file) }
            }
            for (name, weights) in components {
                let file = name.hasPrefix("text_encoder") ? "model.safetensors" : "diffusion_pytorch_model.safetensors"
                let entries = try weights.keys.map { key -> (name: String, dtype: DType, shape: [Int]) in
                    guard let info = weights.info(key) else { throw WeightLoadingError.missingKey(key, origin: weights.origin) }
                    // The dtype after the transform, from a one-element probe of the same type.
                    let dtype = transform(Tensor.zeros([1], dtype: info.dtype)).dtype
                    return (key, dtype, info.shape)
                }
                try SafeTensors.write(entries: entries, metadata: ["format": "pt"], to: partial.appendingPathComponent("\(name)/\(file)")) { key in
                    transform(try weights.tensor(key)).contiguous().tensorData()
                }
            }
            try finish(partial)
            try fm.moveItem(at: partial, to: out)
        } catch {
            try? fm.removeItem(at: partial)
            throw error
        }
    }
}
