import Foundation
import StableDiffusion

/// What a text-encoder run trains: every weight of the encoder(s) (`full`, the method as published), LoRA adapters
/// on their linear layers (`lora`: the encoders stay frozen; a small file in kohya's or PEFT's layout is written), or
/// only the embedding rows of one new token (`token`: textual inversion against the rewards, `TokenAdapter`, the
/// encoders otherwise frozen).
public enum Adapter: String, CaseIterable, Sendable, Codable {
    case full, lora, token
}

/// The LoRA settings of a run (`adapter = "lora"`): keys `lora_rank`, `lora_alpha`, `lora_dropout`, `lora_targets`,
/// `lora_format` and `lora_dtype`.
public struct LoRASettings: Sendable, Equatable, Codable {
    public var rank = 8
    /// nil: the rank (scale 1).
    public var alpha: Double?
    public var dropout = 0.0
    /// Linear layers of every encoder block (`LoRANetwork.targetNames`); an entry may list several, comma-separated.
    public var targets = LoRANetwork.targetNames
    /// The layout of `OUT/lora.safetensors`.
    public var format = LoRAFormat.kohya
    /// The type of `OUT/lora.safetensors` (checkpoints keep float32).
    public var dtype = FloatType.float16

    public init() {}

    public var effectiveAlpha: Double { alpha ?? Double(rank) }

    /// `targets`, each comma-separated entry split.
    public var targetNames: [String] {
        targets.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
    }

    /// nil, or the problem with `targets`.
    var targetsProblem: String? {
        let targets = targetNames
        if targets.isEmpty { return "expected at least one of \(LoRANetwork.targetNames.joined(separator: ", "))" }
        if let unknown = targets.first(where: { !LoRANetwork.targetNames.contains($0) }) {
            return "\"\(unknown.prefix(40))\" is not one of \(LoRANetwork.targetNames.joined(separator: ", "))"
        }
        return nil
    }
}

/// Run records written before these keys existed decode with their defaults (full training), so they still resume.
extension KeyedDecodingContainer {
    func decode(_ type: Adapter.Type, forKey key: Key) throws -> Adapter {
        try decodeIfPresent(Adapter.self, forKey: key) ?? .full
    }

    func decode(_ type: LoRASettings.Type, forKey key: Key) throws -> LoRASettings {
        try decodeIfPresent(LoRASettings.self, forKey: key) ?? LoRASettings()
    }
}
