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
        return try decoder.decode(T.self, from: data)
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
