import ArgumentParser
import Foundation
import StableDiffusion
import TextCraftor
import Torch

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the CLIP token ids and tokens of prompts, one JSON object per line.",
        discussion: """
            Uses the tokenizer of --model (its tokenizer/ folder), or --tokenizer (a tokenizer folder with vocab.json \
            and merges.txt, or an open_clip bpe_simple_vocab_16e6.txt.gz), or else the bundled CLIP vocabulary. Ids \
            include <|startoftext|> and <|endoftext|>; prompts longer than --max-length tokens are truncated, with a \
            warning naming the dropped words. An SDXL --model has a second tokenizer (tokenizer_2/, which pads with \
            "!"): its ids and tokens follow as ids_2 and tokens_2.
            """)

    /// The longest --max-length: far beyond any CLIP context (77), small enough to pad without harm.
    static let maxContextLength = 65_536

    @Option(help: "A diffusers model folder whose tokenizer/ to use, or a single-file checkpoint (its architecture's published tokenizers).", completion: .file()) var model: String?
    @Option(help: "A tokenizer folder or a bpe_simple_vocab_16e6.txt.gz file.", completion: .file()) var tokenizer: String?
    @Option(help: "Context length (ids are truncated to it).") var maxLength = 77
    @Flag(help: "Pad the ids to --max-length, as the model sees them.") var pad = false
    @Argument(help: "Prompts.") var prompts: [String]

    func run() throws {
        guard model == nil || tokenizer == nil else { throw CommandError("give --model or --tokenizer, not both") }
        guard maxLength >= 2 else { throw CommandError("--max-length must be at least 2 (got \(maxLength))") }
        // Padding fills --max-length ids per prompt: an unbounded length is an unbounded allocation.
        guard maxLength <= Self.maxContextLength else {
            throw CommandError("--max-length must be at most \(Self.maxContextLength) (got \(maxLength))")
        }
        let clip: CLIPTokenizer
        var second: CLIPTokenizer? = nil
        if let model {
            // A single file's tokenizers are its architecture's published ones (`ModelSource`).
            let folder = try speakingFlags { try ModelSource(model: model, modelConfig: nil).folder }
            clip = try CLIPTokenizer(directory: folder.appendingPathComponent("tokenizer"))
            let folder2 = folder.appendingPathComponent("tokenizer_2")
            if FileManager.default.fileExists(atPath: folder2.path) { second = try CLIPTokenizer(directory: folder2) }
        } else if let tokenizer {
            clip = tokenizer.hasSuffix(".gz")
                ? try CLIPTokenizer(openCLIPMerges: URL(fileURLWithPath: tokenizer))
                : try CLIPTokenizer(directory: URL(fileURLWithPath: tokenizer))
        } else {
            clip = try CLIPTokenizer.bundled()
        }
        let (ids, dropped) = clip.tokenize(prompts, maxLength: maxLength, padding: pad)
        let ids2 = second?.tokenize(prompts, maxLength: maxLength, padding: pad).ids
        for (i, prompt) in prompts.enumerated() {
            if let words = dropped[i] { warn("prompt \(i + 1) is longer than \(maxLength) tokens; dropped: \(excerpt(words, limit: 200))") }
            var object: [String: Any] = ["prompt": prompt, "ids": ids[i].map(Int.init), "tokens": clip.tokens(ids[i])]
            if let second, let ids2 {
                object["ids_2"] = ids2[i].map(Int.init)
                object["tokens_2"] = second.tokens(ids2[i])
            }
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
            print(String(decoding: data, as: UTF8.self))
        }
    }
}
