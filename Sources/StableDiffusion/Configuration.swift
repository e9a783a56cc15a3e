import Foundation

/// Reads a component's `config.json` (or `scheduler_config.json`, `tokenizer_config.json`) into a Codable struct
/// whose keys are diffusers' own. Errors name the file and the key.
public func decodeConfig<T: Decodable>(_ type: T.Type, from url: URL) throws -> T {
    guard let data = FileManager.default.contents(atPath: url.path) else {
        throw StableDiffusionError.missingFile(url.path)
    }
    do {
        // Python's json writes non-finite floats as bare -Infinity / NaN (DPMSolverMultistepScheduler saves
        // "lambda_min_clipped": -Infinity); JSON5 reads them.
        let decoder = JSONDecoder()
        decoder.allowsJSON5 = true
        let value = try decoder.decode(T.self, from: data)
        try (value as? any RangeCheckedConfig)?.checkRanges(file: url.path, prefix: nil)
        return value
    } catch let error as StableDiffusionError {
        throw error
    } catch let error as DecodingError {
        throw StableDiffusionError.invalidConfig(file: url.path, message: describe(error))
    } catch {
        throw StableDiffusionError.invalidConfig(file: url.path, message: "\(error)")
    }
}

private func describe(_ error: DecodingError) -> String {
    func path(_ context: DecodingError.Context) -> String {
        context.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }
    switch error {
    case .keyNotFound(let key, let context):
        let parent = path(context)
        return "missing key \"\(parent.isEmpty ? key.stringValue : parent + "." + key.stringValue)\""
    case .typeMismatch(let type, let context): return "key \"\(path(context))\" is not a \(type)"
    case .valueNotFound(let type, let context): return "key \"\(path(context))\" is null, expected \(type)"
    case .dataCorrupted(let context):
        let where_ = path(context)
        return where_.isEmpty ? "not valid JSON" : "key \"\(where_)\": \(context.debugDescription)"
    @unknown default: return "\(error)"
    }
}

/// A config value that diffusers accepts as one number for every block or as one per block
/// (`attention_head_dim: 8` or `[5, 10, 20, 20]`).
public enum PerBlock<Value: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    case same(Value)
    case each([Value])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Value.self) {
            self = .same(value)
        } else {
            self = .each(try container.decode([Value].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .same(let value): try container.encode(value)
        case .each(let values): try container.encode(values)
        }
    }

    /// The value for each of `count` blocks.
    public func values(count: Int) -> [Value] {
        switch self {
        case .same(let value): Array(repeating: value, count: count)
        case .each(let values): values
        }
    }
}

/// The transformer depth of one UNet block's attentions: one for all its layers, or one per layer (an entry of
/// diffusers' `transformer_layers_per_block` in asymmetric UNets, and of `reverse_transformer_layers_per_block`).
/// The same shape as a per-block value, one level down.
public typealias LayerDepths = PerBlock<Int>

extension PerBlock where Value == Int {
    /// The largest depth, for size estimates.
    var deepest: Int {
        switch self {
        case .same(let depth): depth
        case .each(let depths): depths.max() ?? 0
        }
    }

    /// A per-layer list must name every layer of its block (diffusers reads the first ones, and fails on a short list
    /// with an IndexError).
    func check(layers: Int, key: String, file: String) throws {
        if case .each(let depths) = self, depths.count < layers {
            throw StableDiffusionError.invalidConfig(
                file: file, message: "key \"\(key)\" has \(depths.count) entries, the block has \(layers) layers")
        }
    }
}

/// Any JSON value: for config entries that are only checked or passed on (open_clip's `act_kwargs`), and for
/// files whose shape is checked by hand (prompt lists), so messages can say what was found.
public enum JSONValue: Codable, Sendable, Equatable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let value = try? c.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? c.decode(Double.self) {
            self = .number(value)
        } else if let value = try? c.decode(String.self) {
            self = .string(value)
        } else if let value = try? c.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let value): try c.encode(value)
        case .number(let value): try c.encode(value)
        case .string(let value): try c.encode(value)
        case .array(let value): try c.encode(value)
        case .object(let value): try c.encode(value)
        }
    }

    public var number: Double? { if case .number(let value) = self { value } else { nil } }

    public var description: String {
        switch self {
        case .null: "null"
        case .bool(let value): "\(value)"
        case .number(let value): value == value.rounded() && abs(value) < 1e15 ? "\(Int(value))" : "\(value)"
        case .string(let value): value
        case .array(let values): "[" + values.map(\.description).joined(separator: ", ") + "]"
        case .object(let values):
            "{" + values.keys.sorted().map { "\($0): \(values[$0]!.description)" }.joined(separator: ", ") + "}"
        }
    }
}

/// A config whose numbers are checked when it is decoded (`decodeConfig`) and again when a model is built from it:
/// sizes positive and bounded, head counts that divide their widths, epsilons and betas in range. A value out of range
/// is `StableDiffusionError.invalidConfig` naming the file and the key, before anything is allocated.
public protocol RangeCheckedConfig {
    /// `prefix` is where this config sits in `file` (`text_config` in a `CLIPModel`'s), for the key in the message.
    func checkRanges(file: String, prefix: String?) throws
}

/// The checks a config's `checkRanges` runs; each throws `invalidConfig` naming the file and the key.
struct ConfigRanges {
    /// Generous bounds: the largest real checkpoints are far inside them (SDXL: 2,048 channels, 10 transformer
    /// layers; OpenCLIP bigG: 1,280 wide, 32 layers; CLIP's vocabulary: 49,408).
    static let maxWidth = 65_536
    static let maxLayers = 1_024
    static let maxVocab = 1_000_000
    /// What a model built from one config may hold at most (ten times OpenCLIP ViT-bigG), estimated from the config.
    static let maxParameters = 20e9

    let file: String
    let prefix: String?

    func name(_ key: String) -> String { prefix.map { "\($0).\(key)" } ?? key }

    func fail(_ key: String, _ message: String) -> StableDiffusionError {
        .invalidConfig(file: file, message: "key \"\(name(key))\" \(message)")
    }

    /// An integer in `range`.
    func int(_ key: String, _ value: Int, in range: ClosedRange<Int>) throws {
        guard range.contains(value) else {
            throw fail(key, "must be between \(range.lowerBound) and \(range.upperBound), got \(value)")
        }
    }

    func width(_ key: String, _ value: Int) throws { try int(key, value, in: 1...Self.maxWidth) }
    func layers(_ key: String, _ value: Int, minimum: Int = 1) throws { try int(key, value, in: minimum...Self.maxLayers) }

    /// A per-block list: each value checked, `key.i` named when the list has one per block.
    func each(_ key: String, _ values: PerBlock<Int>, count: Int, _ check: (String, Int) throws -> Void) throws {
        switch values {
        case .same(let value): try check(key, value)
        case .each(let list): for (i, value) in list.enumerated() { try check("\(key).\(i)", value) }
        }
    }

    /// Transformer depths per block (`key.i`), each for all the block's layers or per layer (`key.i.j`).
    func depths(_ key: String, _ values: PerBlock<LayerDepths>) throws {
        func check(_ key: String, _ depths: LayerDepths) throws {
            switch depths {
            case .same(let depth): try layers(key, depth)
            case .each(let list): for (j, depth) in list.enumerated() { try layers("\(key).\(j)", depth) }
            }
        }
        switch values {
        case .same(let depths): try check(key, depths)
        case .each(let list): for (i, depths) in list.enumerated() { try check("\(key).\(i)", depths) }
        }
    }

    /// A finite number in `range`; `open` excludes the lower bound.
    func double(_ key: String, _ value: Double, in range: ClosedRange<Double>, open: Bool = false) throws {
        guard value.isFinite, range.contains(value), !(open && value == range.lowerBound) else {
            let low = open ? "greater than \(range.lowerBound)" : "at least \(range.lowerBound)"
            throw fail(key, "must be \(low) and at most \(range.upperBound), got \(value)")
        }
    }

    /// A layer-norm or group-norm epsilon: positive, at most 1 (real configs use 1e-5 or 1e-6).
    func epsilon(_ key: String, _ value: Double) throws { try double(key, value, in: 0...1, open: true) }

    /// `heads` divides `width` (multi-head attention splits the width among the heads).
    func divides(_ key: String, heads: Int, _ widthKey: String, width: Int) throws {
        guard heads > 0, width % heads == 0 else {
            throw fail(key, "(\(heads)) must divide \(name(widthKey)) (\(width))")
        }
    }

    /// The estimated parameter count is within `maxParameters`.
    func parameters(_ count: Double, key: String) throws {
        guard count <= Self.maxParameters else {
            throw fail(key, "makes a model of about \(String(format: "%.3g", count)) parameters, more than the \(String(format: "%.3g", Self.maxParameters)) allowed")
        }
    }
}
