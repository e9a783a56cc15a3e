import Foundation
import NN
import Torch

/// A textual-inversion embedding: the rows [N, D] of one token of N vectors, for each text encoder of a model, in the
/// files the front ends load (what `read` takes, what the writers write):
///
/// - `diffusers`: a safetensors (or torch `.bin`) file holding one tensor, keyed by the token (diffusers'
///   `learned_embeds.safetensors`; `load_textual_inversion` also takes a [D] vector as N = 1).
/// - `a1111`: AUTOMATIC1111's torch `.pt`: a dict with `string_to_token` {'*': 265}, `string_to_param`
///   {'*': [N, D]}, `name`, `step`, `sd_checkpoint`, `sd_checkpoint_name`. A1111 names the token after the file's stem.
/// - `a1111SafeTensors`: A1111's safetensors embedding, `emb_params` [N, D]; the token is the file's stem too.
/// - `sdxl`: SDXL's, as A1111 and ComfyUI load it: one safetensors file with `clip_l` [N, 768] (`text_encoder`) and
///   `clip_g` [N, 1280] (`text_encoder_2`); the token is the file's stem.
public struct TokenEmbedding {
    public enum Format: String, Sendable {
        case diffusers
        case a1111 = "a1111-pt"
        case a1111SafeTensors = "a1111-safetensors"
        case sdxl
    }

    public let url: URL
    public let format: Format
    /// The token a diffusers file names (its key); nil where the file's stem names it.
    public let storedToken: String?
    /// `text_encoder`'s rows (SDXL: `clip_l`), [N, D], float32 on the CPU.
    public let first: Tensor
    /// SDXL: `text_encoder_2`'s rows (`clip_g`), [N, D2].
    public let second: Tensor?

    public init(url: URL, format: Format, storedToken: String?, first: Tensor, second: Tensor?) {
        self.url = url
        self.format = format
        self.storedToken = storedToken
        self.first = first
        self.second = second
    }

    /// The token the prompt uses: a diffusers file's key, else the file's stem (as A1111 names it).
    public var token: String { storedToken ?? url.deletingPathExtension().lastPathComponent }
    public var vectors: Int { first.size(0) }

    /// The model the embedding fits, in words: SDXL for clip_l/clip_g; by width, 768 SD 1.x and 1024 SD 2.x.
    public var fits: String {
        if let second { return "SDXL (clip_l \(first.size(1)) wide, clip_g \(second.size(1)) wide)" }
        switch first.size(1) {
        case 768: return "SD 1.x (768 wide)"
        case 1024: return "SD 2.x (1024 wide)"
        case let width: return "a text encoder \(width) wide"
        }
    }

    /// "768 wide (SD 1.x)", "1024 wide (SD 2.x)", "32 wide".
    public static func describe(width: Int) -> String {
        switch width {
        case 768: "768 wide (SD 1.x)"
        case 1024: "1024 wide (SD 2.x)"
        default: "\(width) wide"
        }
    }

    // MARK: - Reading

    /// Reads an embedding file in any of the formats above (`.safetensors` by its keys; anything else as a torch
    /// file). Errors are one line naming the file.
    public static func read(_ url: URL) throws -> TokenEmbedding {
        let path = url.path
        guard FileManager.default.fileExists(atPath: path) else { throw StableDiffusionError.missingFile(path) }
        func fail(_ message: String) -> StableDiffusionError { .invalidArgument("\(path): \(message)") }
        func rows(_ data: TensorData, _ key: String) throws -> Tensor {
            guard data.dtype.isFloatingPoint, data.shape.count == 1 || data.shape.count == 2, data.elementCount > 0 else {
                throw fail("\(key) is a \(data.dtype) tensor of shape \(data.shape), not the rows [N, D] of a token")
            }
            let tensor = try Tensor(data).to(.float32)
            return data.shape.count == 1 ? tensor.unsqueeze(0) : tensor
        }
        func make(_ format: Format, token: String?, _ first: (TensorData, String), _ second: (TensorData, String)? = nil) throws
            -> TokenEmbedding
        {
            let a = try rows(first.0, first.1)
            let b = try second.map { try rows($0.0, $0.1) }
            if let b, b.size(0) != a.size(0) {
                throw fail("clip_l has \(a.size(0)) vectors and clip_g \(b.size(0)): they must have as many")
            }
            return TokenEmbedding(url: url, format: format, storedToken: token, first: a, second: b)
        }
        let expected = "expected a textual-inversion embedding (one token's tensor, emb_params, string_to_param, or clip_l and clip_g)"
        if url.pathExtension.lowercased() == "safetensors" {
            let file = try SafeTensorsFile(url: url)
            let names = Set(file.names)
            if names.contains("clip_l"), names.contains("clip_g") {
                return try make(.sdxl, token: nil, (file.tensorData("clip_l"), "clip_l"), (file.tensorData("clip_g"), "clip_g"))
            }
            if names.contains("emb_params") { return try make(.a1111SafeTensors, token: nil, (file.tensorData("emb_params"), "emb_params")) }
            if file.names.count == 1, let key = file.names.first { return try make(.diffusers, token: key, (file.tensorData(key), key)) }
            throw fail("\(expected); found keys \(file.names.sorted().prefix(8).joined(separator: ", "))")
        }
        let root: PickleValue
        do { root = try TorchCheckpoint.load(url: url) } catch { throw fail("\(expected): \(error)") }
        guard case .dict(let entries) = root else { throw fail("\(expected); found a \(root.kindName)") }
        if let parameters = root["string_to_param"] {
            guard case .dict(let items) = parameters, items.count == 1, let tensor = items[0].value.tensor else {
                throw fail("string_to_param must map one token to a tensor")
            }
            return try make(.a1111, token: nil, (tensor, "string_to_param"))
        }
        if let tensor = root["emb_params"]?.tensor { return try make(.a1111SafeTensors, token: nil, (tensor, "emb_params")) }
        if let l = root["clip_l"]?.tensor, let g = root["clip_g"]?.tensor { return try make(.sdxl, token: nil, (l, "clip_l"), (g, "clip_g")) }
        if entries.count == 1, case .string(let key) = entries[0].key, let tensor = entries[0].value.tensor {
            return try make(.diffusers, token: key, (tensor, key))
        }
        throw fail("\(expected); found keys \(entries.compactMap { if case .string(let k) = $0.key { k } else { nil } }.prefix(8).joined(separator: ", "))")
    }

    // MARK: - Writing

    /// diffusers' `learned_embeds.safetensors`: `{token: [N, D]}`.
    public static func writeDiffusers(token: String, rows: Tensor, to url: URL) throws {
        try Tensor.save([token: cpu(rows)], to: url)
    }

    /// A1111's `.pt` (torch zip, readable by `torch.load(weights_only=True)`); `name` is what A1111 shows, `step`
    /// the training step, `checkpointName` the model it was trained on (`sd_checkpoint_name`).
    public static func writeA1111(name: String, rows: Tensor, step: Int, checkpointName: String?, to url: URL) throws {
        let value = PickleValue.dict([
            (.string("string_to_token"), .dict([(.string("*"), .int(265))])),
            (.string("string_to_param"), .dict([(.string("*"), .tensor(cpu(rows).tensorData()))])),
            (.string("name"), .string(name)),
            (.string("step"), .int(step)),
            (.string("sd_checkpoint"), .none),
            (.string("sd_checkpoint_name"), checkpointName.map(PickleValue.string) ?? .none),
        ])
        try TorchSave.save(value, to: url)
    }

    /// A1111's and ComfyUI's safetensors embedding: `emb_params` [N, D], or SDXL's `clip_l` and `clip_g`.
    public static func writeSafeTensors(first: Tensor, second: Tensor?, to url: URL) throws {
        guard let second else { return try Tensor.save(["emb_params": cpu(first)], to: url) }
        try Tensor.save(["clip_l": cpu(first), "clip_g": cpu(second)], to: url)
    }

    private static func cpu(_ rows: Tensor) -> Tensor { rows.detach().to(dtype: .float32, device: .cpu).contiguous() }
}

extension StableDiffusionPipeline {
    /// Adds `token` with its rows to the tokenizer(s) and text encoder(s), as diffusers' `load_textual_inversion`
    /// does: `first` [N, D] for `text_encoder` (SDXL: and `second` for `text_encoder_2`). The encoders read the rows
    /// as given (a tensor that requires grad trains through them); the tokenizers match the token whole before BPE and
    /// expand it to its N vectors (`CLIPTokenizer.adding`). `origin` names the file in errors.
    public func addToken(_ token: String, first: Tensor, second: Tensor?, origin: String? = nil) throws {
        let source = origin.map { "\($0): " } ?? ""
        func fail(_ message: String) -> StableDiffusionError { .invalidArgument(source + message) }
        switch (textEncoder2, second) {
        case (nil, .some):
            throw fail("an SDXL embedding (clip_l and clip_g) does not fit this SD 1.x/2.x model; use an embedding \(Self.widthWords(textEncoder.config.hidden_size))")
        case (.some(let encoder2), nil):
            throw fail("an embedding for one text encoder (\(TokenEmbedding.describe(width: first.size(-1)))) does not fit this SDXL model, which needs clip_l (\(textEncoder.config.hidden_size) wide) and clip_g (\(encoder2.config.hidden_size) wide)")
        default: break
        }
        let places: [(CLIPTextModel, Tensor, String)] =
            [(textEncoder, first, textEncoder2 == nil ? "text_encoder" : "clip_l")]
            + (textEncoder2.map { [($0.textModel, second!, "clip_g")] } ?? [])
        for (encoder, rows, name) in places where rows.rank != 2 || rows.size(1) != encoder.config.hidden_size {
            let found = rows.rank == 2 ? TokenEmbedding.describe(width: rows.size(1)) : "of shape \(rows.shape)"
            throw fail("the \(name) embedding is \(found), but the model's \(name) is \(Self.widthWords(encoder.config.hidden_size))")
        }
        var tokenizers = [tokenizer] + (tokenizer2.map { [$0] } ?? [])
        for (index, (encoder, rows, name)) in places.enumerated() {
            let expected = encoder.config.vocab_size + (encoder.addedTokenEmbeddings?.size(0) ?? 0)
            guard tokenizers[index].vocabularySize == expected else {
                throw fail("the \(name) tokenizer has \(tokenizers[index].vocabularySize) tokens and its encoder \(expected) rows: cannot add a token")
            }
            do { tokenizers[index] = try tokenizers[index].adding(token: token, vectors: rows.size(0)).tokenizer } catch {
                throw fail("\(error)")
            }
        }
        for (encoder, rows, _) in places {
            // The rows themselves where they fit (a trained token's parameters, updated in place), else a copy in the
            // encoder's type and place.
            let weight = encoder.tokenEmbedding.weight
            let fits = rows.requiresGrad || (rows.dtype == weight.dtype && rows.device == weight.device)
            let typed = fits ? rows : rows.to(dtype: weight.dtype, device: weight.device)
            encoder.addedTokenEmbeddings = encoder.addedTokenEmbeddings.map { Tensor.cat([$0, typed.to($0.dtype)], dim: 0) } ?? typed
        }
        tokenizer = tokenizers[0]
        if tokenizer2 != nil { tokenizer2 = tokenizers[1] }
    }

    /// Loads an embedding file (`TokenEmbedding.read`) under `token` (nil: the file's, `TokenEmbedding.token`);
    /// returns the token the prompts use.
    @discardableResult
    public func loadEmbedding(_ url: URL, token: String? = nil) throws -> String {
        let embedding = try TokenEmbedding.read(url)
        let name = token ?? embedding.token
        try addToken(name, first: embedding.first, second: embedding.second, origin: url.path)
        return name
    }

    /// The token-embedding rows of `word` in each encoder ([1, D], float32 on the CPU; SDXL: `second` too), the
    /// initialisation of a new token. The word must be one token in each tokenizer.
    public func tokenRows(of word: String) throws -> (first: Tensor, second: Tensor?) {
        func row(_ tokenizer: CLIPTokenizer, _ encoder: CLIPTextModel, _ name: String) throws -> Tensor {
            let ids = tokenizer.encode(word)
            guard ids.count == 1 else {
                throw StableDiffusionError.invalidArgument(
                    "init word \"\(word)\" is \(ids.count) tokens in \(name) (\(ids.map { tokenizer.decode([$0]) }.joined(separator: " | "))): give a word that is one token")
            }
            return withNoGrad { encoder.embedTokens(Tensor(ids.map(Int64.init), shape: [1]).to(encoder.tokenEmbedding.weight.device)) }
                .to(dtype: .float32, device: .cpu)
        }
        let first = try row(tokenizer, textEncoder, "tokenizer")
        let second = try textEncoder2.map { try row(tokenizer2!, $0.textModel, "tokenizer_2") }
        return (first, second)
    }

    static func widthWords(_ width: Int) -> String { TokenEmbedding.describe(width: width) }
}
