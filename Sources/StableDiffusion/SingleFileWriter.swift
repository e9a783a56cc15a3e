import Foundation
import NN
import Torch

// Writing the original-layout single files (`SingleFileCheckpoint`'s layouts) from diffusers components, and what a
// reader needs to know of a file beyond its weights (the UNet's input channels, whether it predicts v).

extension SingleFileCheckpoint {
    /// The UNet's input channels as the file stores them (4; 9 for an inpainting model).
    public var unetInChannels: Int? {
        source.info(Self.unetPrefix + "input_blocks.0.0.weight").flatMap { $0.shape.count == 4 ? $0.shape[1] : nil }
    }

    /// What the file says of its prediction type, and why: `v_prediction` where it carries a `v_pred` key (as v-models
    /// trained with kohya's scripts and ComfyUI's saves mark themselves); for SD 2.x the usual test, ComfyUI's: the
    /// last output block's first transformer `norm1.bias` varies more (standard deviation > 0.09) in the 768 v-models
    /// than in the 512 epsilon ones; else `epsilon`, SD 1.x's and SDXL base's.
    public func predictionTypeHint() -> (type: String, reason: String) {
        if keys.contains("v_pred") { return ("v_prediction", "the file has a v_pred key") }
        guard layout == .sd2 else { return ("epsilon", "\(layout.rawValue) models predict the noise") }
        let candidates = keys.compactMap { key -> (Int, String)? in
            let prefix = Self.unetPrefix + "output_blocks.", suffix = ".1.transformer_blocks.0.norm1.bias"
            guard key.hasPrefix(prefix), key.hasSuffix(suffix),
                let index = Int(key.dropFirst(prefix.count).dropLast(suffix.count))
            else { return nil }
            return (index, key)
        }
        guard let (_, key) = candidates.max(by: { $0.0 < $1.0 }), let bias = try? source.tensor(key).to(dtype: .float64, device: .cpu).toArray(Double.self), !bias.isEmpty else {
            return ("epsilon", "no transformer norm in the UNet's output blocks to test: assumed epsilon")
        }
        let mean = bias.reduce(0, +) / Double(bias.count)
        let std = (bias.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(bias.count)).squareRoot()
        let v = std > 0.09
        return (v ? "v_prediction" : "epsilon",
                String(format: "the usual SD 2.x test: standard deviation of %@ is %.4f, %@ 0.09", excerpt(key, limit: 90), std, v ? ">" : "<="))
    }
}

/// A model in diffusers' components written in the original single-file layout of its architecture: each
/// component's diffusers names mapped back to the CompVis/Stability keys (`SingleFileCheckpoint`'s maps inverted:
/// q/k/v fused back into OpenCLIP's `in_proj`, bigG's `text_projection` transposed back, the VAE's attention
/// projections as 1x1 convolutions), every tensor converted when the writer reaches it.
public struct SingleFileLayoutWriter {
    public let layout: SingleFileCheckpoint.Layout

    public init(layout: SingleFileCheckpoint.Layout) { self.layout = layout }

    /// The original-layout weights of `weights` (diffusers or transformers names) of the component `name`
    /// (`unet`, `vae`, `text_encoder`, `text_encoder_2`), whose config is `config`; `origin` names them in errors.
    public func originalWeights(_ name: String, _ weights: any WeightSource, unet: UNet2DConditionConfig? = nil,
                                vae: AutoencoderKLConfig? = nil) throws -> LazyWeights {
        var parts: [String: [(index: Int, key: String, transform: Inverse)]] = [:]
        for key in weights.keys {
            let found: (String, Int, Inverse)?
            switch name {
            case "unet": found = unet.flatMap { unetKey(key, config: $0) }.map { ($0, 0, .none) }
            case "vae": found = vae.flatMap { vaeKey(key, config: $0, shape: weights.info(key)?.shape ?? []) }
            case "text_encoder" where layout == .sd2: found = openCLIPKey(key, prefix: "cond_stage_model.model.")
            case "text_encoder": found = clipKey(key, prefix: layout == .sd1 ? "cond_stage_model.transformer." : "conditioner.embedders.0.transformer.")
            case "text_encoder_2": found = openCLIPKey(key, prefix: "conditioner.embedders.1.model.")
            default: found = nil
            }
            guard let (target, index, transform) = found else {
                throw StableDiffusionError.invalidArgument(
                    "\(weights.origin): '\(excerpt(key, limit: 100))' of \(name) has no place in the \(layout.rawValue) single-file layout")
            }
            parts[target, default: []].append((index, key, transform))
        }
        var out = LazyWeights(origin: weights.origin)
        for (target, pieces) in parts {
            let sorted = pieces.sorted { $0.index < $1.index }
            guard let first = weights.info(sorted[0].key) else { continue }
            var shape = first.shape
            switch sorted[0].transform {
            case .none: break
            case .transpose: shape = shape.count == 2 ? [shape[1], shape[0]] : shape
            case .unsqueeze: shape += shape.count == 2 ? [1, 1] : []
            case .fuse:
                guard sorted.map(\.index) == [0, 1, 2] else {
                    throw StableDiffusionError.invalidArgument(
                        "\(weights.origin): '\(target)' needs q, k and v, and \(name) has \(sorted.map(\.key).joined(separator: ", "))")
                }
                shape[0] *= 3
            }
            if sorted.count > 1, case .fuse = sorted[0].transform {} else if sorted.count > 1 {
                throw StableDiffusionError.invalidArgument(
                    "\(weights.origin): \(sorted.map { "'\($0.key)'" }.joined(separator: " and ")) both map to '\(target)'")
            }
            let transform = sorted[0].transform, keys = sorted.map(\.key)
            out.entries[target] = LazyWeights.Entry(dtype: first.dtype, shape: shape) {
                let tensors = try keys.map { try weights.tensor($0) }
                switch transform {
                case .none: return tensors[0]
                case .transpose: return tensors[0].transpose(0, 1).contiguous()
                case .unsqueeze: return tensors[0].shape.count == 2 ? tensors[0].reshape(tensors[0].shape + [1, 1]) : tensors[0]
                case .fuse: return Tensor.cat(tensors, dim: 0)
                }
            }
        }
        // What the published files carry and the readers drop: CLIP's position ids.
        if name == "text_encoder", layout != .sd2, let width = weights.info("text_model.embeddings.position_embedding.weight")?.shape.first {
            let key = (layout == .sd1 ? "cond_stage_model.transformer." : "conditioner.embedders.0.transformer.") + "text_model.embeddings.position_ids"
            out.entries[key] = LazyWeights.Entry(dtype: .int64, shape: [1, width]) { Tensor.arange(Double(width)).reshape([1, width]) }
        }
        return out
    }

    /// How a diffusers tensor goes back: as it is, transposed, as a 1x1 convolution, or fused with its q/k/v siblings.
    enum Inverse { case none, transpose, unsqueeze, fuse }

    static let resnetNames = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                              ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]

    func unetKey(_ key: String, config: UNet2DConditionConfig) -> String? {
        let n = config.block_out_channels.count
        let layers = config.layers_per_block.values(count: n)
        let p = SingleFileCheckpoint.unetPrefix
        let fixed = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                     ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
                     ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
        if let (new, old) = fixed.first(where: { key.hasPrefix($0.0) }) { return p + old + key.dropFirst(new.count) }
        func resnet(_ rest: Substring) -> String? {
            Self.resnetNames.first { rest.hasPrefix($0.0) }.map { $0.1 + rest.dropFirst($0.0.count) }
        }
        let parts = key.split(separator: ".", maxSplits: 4).map(String.init)
        // down_blocks.i.(resnets|attentions|downsamplers).j.rest
        if parts.count == 5, let i = Int(parts[1]), let j = Int(parts[3]), i < n {
            let rest = Substring(parts[4])
            switch (parts[0], parts[2]) {
            case ("down_blocks", "downsamplers"):
                guard i < n - 1, j == 0, rest.hasPrefix("conv.") else { return nil }
                return p + "input_blocks.\(downIndex(i, layers[i], layers)).0.op." + rest.dropFirst("conv.".count)
            case ("down_blocks", "resnets") where j < layers[i]:
                return resnet(rest).map { p + "input_blocks.\(downIndex(i, j, layers)).0.\($0)" }
            case ("down_blocks", "attentions") where j < layers[i]:
                return p + "input_blocks.\(downIndex(i, j, layers)).1.\(rest)"
            case ("up_blocks", "upsamplers"):
                let count = layers.reversed()[i]
                let part = config.up_block_types[i].contains("CrossAttn") ? 2 : 1
                return j == 0 ? p + "output_blocks.\(upIndex(i, count, layers)).\(part).\(rest)" : nil
            case ("up_blocks", "resnets") where j <= layers.reversed()[i]:
                return resnet(rest).map { p + "output_blocks.\(upIndex(i, j, layers)).0.\($0)" }
            case ("up_blocks", "attentions") where j <= layers.reversed()[i]:
                return p + "output_blocks.\(upIndex(i, j, layers)).1.\(rest)"
            default: return nil
            }
        }
        // mid_block.(resnets|attentions).j.rest
        let mid = key.split(separator: ".", maxSplits: 3).map(String.init)
        if mid.count == 4, mid[0] == "mid_block", let j = Int(mid[2]) {
            switch (mid[1], j) {
            case ("resnets", 0), ("resnets", 1): return resnet(Substring(mid[3])).map { p + "middle_block.\(j * 2).\($0)" }
            case ("attentions", 0): return p + "middle_block.1.\(mid[3])"
            default: return nil
            }
        }
        return nil
    }

    /// `input_blocks` index of down block `i`'s layer `j` (`j == layers[i]`: its downsampler), as the file counts.
    func downIndex(_ i: Int, _ j: Int, _ layers: [Int]) -> Int {
        1 + layers.prefix(i).reduce(0, +) + i + j
    }

    /// `output_blocks` index of up block `i`'s layer `j` (each up block has one layer more than its down block).
    func upIndex(_ i: Int, _ j: Int, _ layers: [Int]) -> Int {
        layers.reversed().prefix(i).reduce(0) { $0 + $1 + 1 } + j
    }

    func vaeKey(_ key: String, config: AutoencoderKLConfig, shape: [Int]) -> (String, Int, Inverse)? {
        let p = SingleFileCheckpoint.vaePrefix
        if key.hasPrefix("quant_conv.") || key.hasPrefix("post_quant_conv.") { return (p + key, 0, .none) }
        let sides = key.split(separator: ".", maxSplits: 1).map(String.init)
        guard sides.count == 2, sides[0] == "encoder" || sides[0] == "decoder" else { return nil }
        let side = sides[0], rest = sides[1], n = config.block_out_channels.count
        let rules = [("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2."),
                     ("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."), ("mid_block.attentions.0.to_q.", "mid.attn_1.q."),
                     ("mid_block.attentions.0.to_k.", "mid.attn_1.k."), ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
                     ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out."), ("conv_norm_out.", "norm_out."),
                     // diffusers' older names of the same projections
                     ("mid_block.attentions.0.query.", "mid.attn_1.q."), ("mid_block.attentions.0.key.", "mid.attn_1.k."),
                     ("mid_block.attentions.0.value.", "mid.attn_1.v."), ("mid_block.attentions.0.proj_attn.", "mid.attn_1.proj_out."),
                     ("conv_in.", "conv_in."), ("conv_out.", "conv_out.")]
        var name: String?
        if let (new, old) = rules.first(where: { rest.hasPrefix($0.0) }) {
            name = old + rest.dropFirst(new.count)
        } else {
            let p = rest.split(separator: ".", maxSplits: 4).map(String.init)
            guard p.count == 5, let i = Int(p[1]), let j = Int(p[3]), i < n else { return nil }
            switch (side, p[0], p[2]) {
            case ("encoder", "down_blocks", "resnets"): name = "down.\(i).block.\(j).\(p[4])"
            case ("encoder", "down_blocks", "downsamplers") where j == 0: name = "down.\(i).downsample.\(p[4])"
            case ("decoder", "up_blocks", "resnets"): name = "up.\(n - 1 - i).block.\(j).\(p[4])"
            case ("decoder", "up_blocks", "upsamplers") where j == 0: name = "up.\(n - 1 - i).upsample.\(p[4])"
            default: return nil
            }
            name = name!.replacingOccurrences(of: ".conv_shortcut.", with: ".nin_shortcut.")
        }
        guard let name else { return nil }
        let attention = name.hasPrefix("mid.attn_1.") && !name.hasPrefix("mid.attn_1.norm.")
        return ("\(p)\(side).\(name)", 0, attention && shape.count == 2 ? .unsqueeze : .none)
    }

    func clipKey(_ key: String, prefix: String) -> (String, Int, Inverse)? {
        key.hasPrefix("text_model.") && key != "text_model.embeddings.position_ids" ? (prefix + key, 0, .none) : nil
    }

    func openCLIPKey(_ key: String, prefix: String) -> (String, Int, Inverse)? {
        switch key {
        case "text_model.embeddings.token_embedding.weight": return (prefix + "token_embedding.weight", 0, .none)
        case "text_model.embeddings.position_embedding.weight": return (prefix + "positional_embedding", 0, .none)
        case "text_projection.weight": return (prefix + "text_projection", 0, .transpose)
        default: break
        }
        if key.hasPrefix("text_model.final_layer_norm.") {
            return (prefix + "ln_final." + key.dropFirst("text_model.final_layer_norm.".count), 0, .none)
        }
        let layer = "text_model.encoder.layers."
        guard key.hasPrefix(layer) else { return nil }
        let parts = key.dropFirst(layer.count).split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let i = Int(parts[0]) else { return nil }
        let block = prefix + "transformer.resblocks.\(i)."
        for (index, q) in ["q_proj", "k_proj", "v_proj"].enumerated() {
            for kind in ["weight", "bias"] where parts[1] == "self_attn.\(q).\(kind)" {
                return (block + "attn.in_proj_\(kind)", index, .fuse)
            }
        }
        let names = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("self_attn.out_proj.", "attn.out_proj."),
                     ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
        guard let (new, old) = names.first(where: { parts[1].hasPrefix($0.0) }) else { return nil }
        return (block + old + parts[1].dropFirst(new.count), 0, .none)
    }
}

extension SingleFileCheckpoint {
    /// Checks that `weights`, about to be written as a single file at `url`, read back through this reader's maps
    /// to exactly `expected` (per component: the diffusers names and shapes given to the writer): every key placed,
    /// none lost or doubled.
    public static func verifyRoundTrip(
        _ weights: LazyWeights, url: URL, expected: [(name: String, weights: any WeightSource)], unet: UNet2DConditionConfig,
        vae: AutoencoderKLConfig, text: CLIPTextConfig, text2: CLIPTextConfig?
    ) throws {
        let reader = try SingleFileCheckpoint(source: weights, url: url, useEMA: false)
        for (name, source) in expected {
            let read: RenamedWeights
            switch name {
            case "unet": read = try reader.unet(config: unet)
            case "vae": read = try reader.vae(config: vae)
            case "text_encoder": read = try reader.textEncoder(config: text)
            default: read = try reader.textEncoder2(config: text2 ?? text)
            }
            // The reader names the VAE's attention projections as diffusers does now (older folders: query, ...).
            let old = [(".attentions.0.query.", ".attentions.0.to_q."), (".attentions.0.key.", ".attentions.0.to_k."),
                       (".attentions.0.value.", ".attentions.0.to_v."), (".attentions.0.proj_attn.", ".attentions.0.to_out.0.")]
            func current(_ key: String) -> String {
                guard name == "vae", let (from, to) = old.first(where: { key.contains($0.0) }) else { return key }
                return key.replacingOccurrences(of: from, with: to)
            }
            let renamed = Dictionary(source.keys.map { (current($0), $0) }, uniquingKeysWith: { a, _ in a })
            let wanted = Set(renamed.keys.filter { $0 != "text_model.embeddings.position_ids" }), got = Set(read.keys)
            if let key = wanted.subtracting(got).sorted().first ?? got.subtracting(wanted).sorted().first {
                throw StableDiffusionError.invalidArgument(
                    "\(url.path): \(name) would not read back as written ('\(excerpt(key, limit: 100))' \(wanted.contains(key) ? "lost" : "added"))")
            }
            for key in wanted where read.info(key)?.shape != source.info(renamed[key]!)?.shape {
                throw StableDiffusionError.invalidArgument(
                    "\(url.path): \(name) '\(excerpt(key, limit: 100))' would read back as \(read.info(key)?.shape ?? []), written \(source.info(renamed[key]!)?.shape ?? [])")
            }
        }
    }
}
