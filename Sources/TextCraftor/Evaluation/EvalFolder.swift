import Foundation
import Rewards
import StableDiffusion
import Torch

/// What the images depend on: the same in a rerun, or the images on disk are another run's.
struct EvalSampling: Codable, Equatable, Sendable {
    var steps: Int
    var guidance: Double
    var imagesPerPrompt: Int
    var seed: UInt64
    /// Left out of eval.json when unset, so that records from before these keys still match.
    var clipSkip: Int? = nil
    var crop: [Int]? = nil

    /// A request for `prompt`'s images (prompt i draws with seed + i).
    func request(_ prompt: String, index: Int) -> GenerationRequest {
        var request = GenerationRequest(prompts: [prompt])
        request.steps = steps
        request.guidanceScale = guidance
        request.imagesPerPrompt = imagesPerPrompt
        request.seed = seed &+ UInt64(index)
        request.clipSkip = clipSkip
        request.cropTopLeft = crop.map { ($0[0], $0[1]) }
        return request
    }
}

struct EvalVariant {
    let name: String
    let description: String
    let mix: EncoderMix?
    let schedulerName: String?
}

/// A score column: a reward model, or a measure computed from the pixels and the prompt (the ShapesWorld oracle).
struct EvalScorer {
    let name: String
    let device: Device
    var reward: (any Reward)? = nil
    var oracle: (([UInt8], String) -> Double)? = nil

    /// `images`: the PNGs' 8-bit pixels. Rewards see them as their published tools do (`Reward.score(files:)`).
    func score(_ images: [RGB8Image], prompts: [String]) throws -> [Double] {
        if let reward {
            return try withNoGrad { try reward.score(files: images, prompts: prompts, device: device).to(.float64).toArray(Double.self) }
        }
        return prompts.indices.map { oracle!(images[$0].pixels, prompts[$0]) }
    }
}

/// OUT/eval.json.
struct EvalManifest: Codable, Equatable {
    struct Variant: Codable, Equatable {
        let name: String
        let description: String
    }
    var model: String
    var dtype: String
    var device: String
    var prompts: [EvalPrompt]
    var sampling: EvalSampling
    var variants: [Variant]

    /// The first thing that differs from `other`, in words.
    func difference(from other: EvalManifest) -> String? {
        if model != other.model { return "model \(other.model), not \(model)" }
        if dtype != other.dtype || device != other.device { return "dtype/device \(other.dtype)/\(other.device)" }
        if prompts != other.prompts { return "other prompts (\(other.prompts.count), not \(prompts.count))" }
        if sampling != other.sampling {
            let extra = [other.sampling.clipSkip.map { ", clip skip \($0)" }, other.sampling.crop.map { ", crop \($0[0]),\($0[1])" }]
            return "other sampling (steps \(other.sampling.steps), guidance \(other.sampling.guidance), \(other.sampling.imagesPerPrompt) per prompt, seed \(other.sampling.seed)\(extra.compactMap { $0 }.joined()))"
        }
        for variant in variants {
            if let old = other.variants.first(where: { $0.name == variant.name }), old != variant {
                return "variant \(variant.name) was \(old.description)"
            }
        }
        return nil
    }
}

enum EvalFolder {
    /// OUT is new or empty, or an earlier eval of the same images (resumed, and may gain variants); an eval of other
    /// images is replaced only with --overwrite; a folder that is not an eval's is never touched.
    static func prepare(_ url: URL, manifest: EvalManifest, overwrite: Bool) throws {
        let files = FileManager.default
        let record = url.appendingPathComponent("eval.json")
        let contents = (try? files.contentsOfDirectory(atPath: url.path)) ?? []
        if !contents.isEmpty {
            guard let data = files.contents(atPath: record.path) else {
                throw TextCraftorError.invalidSetting(key: "out", message: "\(url.path) is not empty and holds no eval.json: choose a new or empty folder")
            }
            guard let old = try? JSONDecoder().decode(EvalManifest.self, from: data) else {
                throw TextCraftorError.invalidSetting(key: "out", message: "\(record.path) cannot be read: choose a new or empty folder")
            }
            if let difference = manifest.difference(from: old) {
                guard overwrite else {
                    throw TextCraftorError.invalidSetting(key: "out", message: "\(url.path) holds images of a different run (\(difference)): pass --overwrite (overwrite = true) to replace them, or choose another folder")
                }
                try files.removeItem(at: url)
            }
        }
        try files.createDirectory(at: url, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(manifest).write(to: record, options: .atomic)
    }
}
