import Foundation
import NN
import StableDiffusion
import Torch

extension StableDiffusionPipeline {
    /// Loads textual-inversion embeddings, each `FILE[:TOKEN]` (a path that exists is a file whole; otherwise the
    /// part after the last ":" is the token). The token defaults to the file's (`TokenEmbedding.token`: a diffusers
    /// file's key, else the file's stem, as A1111 names it). Errors name the key `embedding` and the file.
    public func loadEmbeddings(_ specs: [String]) throws {
        for spec in specs {
            var path = spec, token: String? = nil
            if !FileManager.default.fileExists(atPath: spec), let colon = spec.lastIndex(of: ":") {
                path = String(spec[..<colon])
                token = String(spec[spec.index(after: colon)...])
            }
            do { try loadEmbedding(URL(fileURLWithPath: path), token: token) } catch {
                throw TextCraftorError.invalidSetting(key: "embedding", message: "\(error)")
            }
        }
    }
}

/// A module that writes its own folder in a run (`RunFolder.writeModel`) instead of config.json + weights.
protocol WritesOwnFolder: Module {
    func write(to folder: URL) throws
}

/// `adapter token`: textual inversion against the rewards. A new token (`token`, of `vectors` vectors: `token`,
/// `token_1`, ... as diffusers names them) is added to the model's tokenizer(s); its rows [N, D] are this module's
/// parameters, spliced into the encoders after their vocabulary (`CLIPTextModel.addedTokenEmbeddings`), so that the
/// optimizer holds N x D values per encoder and every weight of the model, the rest of the token embedding included,
/// stays as loaded. The rows start as the init word's row (a word that is one token in each tokenizer; several
/// tokens is an error). On SDXL the token is in both tokenizers and both encoders; `train` chooses whose rows train
/// (text-encoder: clip_l, text-encoder-2: clip_g, text-encoders: both); the others keep the init word's.
///
/// Each prompt gets the token appended as ", TOKEN" unless it already names it (then it is where the prompt puts it);
/// the rewards score the images against the prompts as written. The unconditional prompt stays "".
///
/// Parameters and files: SD 1.x/2.x `emb_params` [N, D], SDXL `clip_l` and `clip_g`: the run's `OUT/token/STEM.safetensors`
/// (A1111's and ComfyUI's embedding, STEM the token without characters other than letters, digits, `.`, `_`, `-`),
/// which checkpoints and resume read; beside it diffusers' `learned_embeds.safetensors` ({token: [N, D]}; SDXL also
/// `learned_embeds_2.safetensors` for text_encoder_2) and on SD 1.x/2.x A1111's `STEM.pt`.
public final class TokenAdapter: WritesOwnFolder {
    public let scope: ParameterScope
    public let token: String
    /// `text_encoder`'s rows (SDXL: clip_l) and SDXL's `text_encoder_2` rows (clip_g).
    public let first: Tensor
    public let second: Tensor?
    /// The rows as they started (the init word's): the original of the proximity penalty (`withInitialRows`).
    let initialFirst: Tensor
    let initialSecond: Tensor?
    /// The step the written files record (A1111's `step`); the trainer sets it before saving.
    public var step = 0
    /// The model's folder name (A1111's `sd_checkpoint_name`).
    let modelName: String?

    /// Adds the token to `pipeline` (rows from `initWord`) with rows on its device, trainable where `train` says.
    public init(pipeline: StableDiffusionPipeline, token: String, initWord: String, vectors: Int, train: TrainedNetwork,
                modelName: String? = nil) throws {
        let (l, g) = try Self.named("init_word") { try pipeline.tokenRows(of: initWord) }
        let isXL = pipeline.architecture == .sdxl
        var initial = [(isXL ? "clip_l" : "emb_params", l.expand([vectors, l.size(1)]).contiguous())]
        if let g { initial.append(("clip_g", g.expand([vectors, g.size(1)]).contiguous())) }
        let vb = VarBuilder(TensorDictionary(Dictionary(uniqueKeysWithValues: initial)), dtype: .float32, device: pipeline.device)
        let rows = try vb.build { vb in initial.map { vb.get($0.1.shape, $0.0) } }
        scope = vb.scope
        self.token = token
        first = rows[0]
        second = rows.count > 1 ? rows[1] : nil
        initialFirst = rows[0].detach().clone()
        initialSecond = rows.count > 1 ? rows[1].detach().clone() : nil
        self.modelName = modelName
        first.requiresGrad = train.trainsFirstEncoder
        second?.requiresGrad = train.trainsSecondEncoder
        try Self.named("token") { try pipeline.addToken(token, first: first, second: second) }
    }

    /// What `init` would refuse (an init word of several tokens, a token already in a vocabulary), checked without
    /// changing the pipeline: a session checks it before it writes anything.
    static func check(_ config: TrainingConfig, pipeline: StableDiffusionPipeline) throws {
        guard config.adapter == .token, let token = config.token, let word = config.initWord else { return }
        _ = try named("init_word") { try pipeline.tokenRows(of: word) }
        for tokenizer in [pipeline.tokenizer] + (pipeline.tokenizer2.map { [$0] } ?? []) {
            _ = try named("token") { try tokenizer.adding(token: token, vectors: config.vectors) }
        }
    }

    /// Library errors as errors of the setting `key` (the CLI names its flag).
    private static func named<T>(_ key: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let error as StableDiffusionError {
            throw TextCraftorError.invalidSetting(key: key, message: "\(error)")
        }
    }

    /// The file name of the A1111 files (without extension): the token's letters, digits, `.`, `_` and `-`.
    public var stem: String {
        let kept = String(token.unicodeScalars.filter { CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0) })
        return kept.isEmpty ? "embedding" : kept
    }

    /// The run's component: `OUT/token/STEM.safetensors` holds the parameters by their names.
    func component(modelFolder: URL) -> RunFolder.Component {
        RunFolder.Component(name: "token", weights: "\(stem).safetensors", config: modelFolder.appendingPathComponent("model_index.json"))
    }

    /// "a red circle" -> "a red circle, TOKEN"; a prompt that names the token is kept; "" -> "TOKEN".
    public func prompt(_ text: String) -> String {
        if text.contains(token) { return text }
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        return trimmed.isEmpty ? token : "\(trimmed), \(token)"
    }

    func write(to folder: URL) throws {
        try TokenEmbedding.writeSafeTensors(first: first, second: second, to: folder.appendingPathComponent("\(stem).safetensors"))
        try TokenEmbedding.writeDiffusers(token: token, rows: first, to: folder.appendingPathComponent("learned_embeds.safetensors"))
        if let second {
            try TokenEmbedding.writeDiffusers(token: token, rows: second, to: folder.appendingPathComponent("learned_embeds_2.safetensors"))
        } else {
            try TokenEmbedding.writeA1111(name: stem, rows: first, step: step, checkpointName: modelName,
                                          to: folder.appendingPathComponent("\(stem).pt"))
        }
    }

    /// The relations of `adapter`, `token`, `init_word` and `vectors` (`TrainingConfig.validateRelations`).
    static func validate(_ config: TrainingConfig) throws {
        guard config.adapter == .token else {
            for (key, given) in [("token", config.token != nil), ("init_word", config.initWord != nil), ("vectors", config.vectors != 1)] where given {
                throw TextCraftorError.invalidSetting(key: key, message: "is for adapter token (add --adapter token)")
            }
            return
        }
        guard let token = config.token, !token.isEmpty else {
            throw TextCraftorError.invalidSetting(key: "token", message: "adapter token needs the new token, e.g. --token \"<aesthetic>\"")
        }
        guard !token.unicodeScalars.contains(where: \.properties.isWhitespace) else {
            throw TextCraftorError.invalidSetting(key: "token", message: "\"\(token)\" must be one word without whitespace")
        }
        guard let word = config.initWord, !word.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw TextCraftorError.invalidSetting(key: "init_word", message: "adapter token needs the word its rows start from, e.g. --init-word beautiful")
        }
        guard config.train.trainsTextEncoder else {
            throw TextCraftorError.invalidSetting(key: "train", message: "unet is the UNet stage; adapter token trains a token of the text encoder(s)")
        }
    }
}
