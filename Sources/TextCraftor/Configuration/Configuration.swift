import Foundation
import StableDiffusion
import TOMLKit
import Torch

/// A job's configuration: one Codable type with its defaults (the property initialisers, `init()`), a table of its
/// keys (`fields`: the key as the TOML file and the flags spell it, the property it sets, the range it must lie in),
/// and one `validate()`. A TOML file decodes into it (`ConfigFile.load`), command-line flags overlay it
/// (`overlaying(_:)`, keyed like the file), a run folder records it as JSON, and resume reads that back.
///
/// Adding an option means adding a property with its default and its entry in `fields` (and, in the command, a flag
/// of the same name).
public protocol Configuration: Codable, Sendable, Equatable {
    init()
    /// Every key, in the order `--help` and errors list them.
    static var fields: [ConfigField<Self>] { get }
    /// Checks between keys (a window larger than the sampler, say), after each key's own range.
    func validateRelations() throws
}

extension Configuration {
    public func validateRelations() throws {}

    /// Each key's range, then the checks between keys. Errors name the key: `lr: expected a number > 0, found -1.0`.
    public func validate() throws {
        for field in Self.fields {
            if let (key, problem) = field.check(self) { throw TextCraftorError.invalidSetting(key: key, message: problem) }
        }
        try validateRelations()
    }

    /// The keys, sorted (for "did you mean" and tests).
    public static var keys: [String] { fields.map(\.key).sorted() }

    /// These settings with `values` put over them, keyed like the file (`grad_window`). A value of the wrong type is
    /// a programming error in the caller (a flag declared with another type than its key), reported as such.
    public func overlaying(_ values: [(key: String, value: Any)]) throws -> Self {
        var result = self
        for (key, value) in values {
            guard let field = Self.fields.first(where: { $0.key == key }) else {
                throw TextCraftorError.invalidArgument("\(Self.self) has no key \"\(key)\"")
            }
            guard field.assign(value, &result) else {
                throw TextCraftorError.invalidArgument("\(Self.self) key \"\(key)\" takes no \(type(of: value))")
            }
        }
        return result
    }
}

/// A job that loads a Stable Diffusion model to sample from it (generation, evaluation): the model's keys
/// (`ModelConfiguration`), `variant`, `dtype`, `device` and `embedding`, read and checked alike.
public protocol InferenceConfiguration: ModelConfiguration {
    var variant: String? { get set }
    var dtype: FloatType { get set }
    var device: String { get set }
    /// Textual-inversion embeddings, `FILE[:TOKEN]` each (`StableDiffusionPipeline.loadEmbeddings`).
    var embedding: [String] { get set }
}

extension InferenceConfiguration {
    static var inferenceFields: [ConfigField<Self>] {
        modelFields + [.string("variant", \.variant), .choice("dtype", \.dtype), .device("device", \.device),
                       .strings("embedding", \.embedding)]
    }
}

/// The range a numeric option must lie in, and how messages say it.
public enum Bound: Sendable {
    case any, positive, nonNegative, unit
    /// From `low` to `high`, both included: sizes that would otherwise allocate without limit.
    case between(Double, Double)

    func phrase(integer: Bool) -> String {
        switch (self, integer) {
        case (.any, true): "an integer"
        case (.any, false): "a number"
        case (.positive, true): "an integer >= 1"
        case (.positive, false): "a number > 0"
        case (.nonNegative, true): "an integer >= 0"
        case (.nonNegative, false): "a number >= 0"
        case (.unit, _): "a number in [0, 1)"
        case (.between(let low, _), true): "an integer >= \(Int64(low))"
        case (.between(let low, _), false): "a number >= \(low)"
        }
    }

    /// nil when `value` is in range; else "expected ..., found ...".
    func problem(_ value: Double, integer: Bool) -> String? {
        let fits = switch self {
        case .any: value.isFinite
        case .positive: value.isFinite && value > 0
        case .nonNegative: value.isFinite && value >= 0
        case .unit: value >= 0 && value < 1
        case .between(let low, let high): value >= low && value <= high
        }
        if fits { return nil }
        let found = integer ? String(Int64(exactly: value.rounded()) ?? Int64.max) : String(value)
        if case .between(_, let high) = self, value > high {
            return "expected \(integer ? "an integer <= \(Int64(high))" : "a number <= \(high)"), found \(found)"
        }
        return "expected \(phrase(integer: integer)), found \(found)"
    }
}

/// One key of a `Configuration`: how the TOML file gives it, how a typed value (a flag's) sets it, and its range.
public struct ConfigField<Config>: @unchecked Sendable {
    public let key: String
    /// Reads the key's TOML value into the configuration; errors name the file and the key.
    let read: (TOMLValueConvertible, ConfigFile.Reader, inout Config) throws -> Void
    /// (key, problem) when the value is out of range (`key` may be finer than the field's: `reward[0].gamma`).
    let check: (Config) -> (String, String)?
    /// Sets the value from a flag's typed value; false when the type does not fit.
    let assign: (Any, inout Config) -> Bool

    /// A key of type `Value`; `Optional` keys use the other initialiser, so a flag's plain value fills them.
    public init<Value>(
        _ key: String, _ path: WritableKeyPath<Config, Value>,
        read: @escaping (TOMLValueConvertible, ConfigFile.Reader, String) throws -> Value,
        problem: @escaping (Value) -> String? = { _ in nil }
    ) {
        self.key = key
        self.read = { value, reader, config in config[keyPath: path] = try read(value, reader, key) }
        self.check = { config in problem(config[keyPath: path]).map { (key, $0) } }
        self.assign = { value, config in
            guard let value = value as? Value else { return false }
            config[keyPath: path] = value
            return true
        }
    }

    public init<Value>(
        _ key: String, _ path: WritableKeyPath<Config, Value?>,
        read: @escaping (TOMLValueConvertible, ConfigFile.Reader, String) throws -> Value,
        problem: @escaping (Value) -> String? = { _ in nil }
    ) {
        self.key = key
        self.read = { value, reader, config in config[keyPath: path] = try read(value, reader, key) }
        self.check = { config in config[keyPath: path].flatMap(problem).map { (key, $0) } }
        self.assign = { value, config in
            guard let value = value as? Value else { return false }
            config[keyPath: path] = value
            return true
        }
    }

    /// A key whose range check names sub-keys itself (a list of tables).
    init(key: String, read: @escaping (TOMLValueConvertible, ConfigFile.Reader, inout Config) throws -> Void,
         check: @escaping (Config) -> (String, String)?, assign: @escaping (Any, inout Config) -> Bool) {
        self.key = key
        self.read = read
        self.check = check
        self.assign = assign
    }
}

extension ConfigField {
    public static func number(_ key: String, _ path: WritableKeyPath<Config, Double>, _ bound: Bound = .any) -> Self {
        Self(key, path, read: { try $1.number($0, $2, bound) }, problem: { bound.problem($0, integer: false) })
    }

    public static func number(_ key: String, _ path: WritableKeyPath<Config, Double?>, _ bound: Bound = .any) -> Self {
        Self(key, path, read: { try $1.number($0, $2, bound) }, problem: { bound.problem($0, integer: false) })
    }

    public static func integer(_ key: String, _ path: WritableKeyPath<Config, Int>, _ bound: Bound = .any) -> Self {
        Self(key, path, read: { try $1.integer($0, $2, bound) }, problem: { bound.problem(Double($0), integer: true) })
    }

    public static func integer(_ key: String, _ path: WritableKeyPath<Config, Int?>, _ bound: Bound = .any) -> Self {
        Self(key, path, read: { try $1.integer($0, $2, bound) }, problem: { bound.problem(Double($0), integer: true) })
    }

    /// A seed: any integer >= 0 (a flag gives a UInt64).
    public static func seed(_ key: String, _ path: WritableKeyPath<Config, UInt64>) -> Self {
        Self(key, path, read: { UInt64(try $1.integer($0, $2, .nonNegative)) })
    }

    public static func flag(_ key: String, _ path: WritableKeyPath<Config, Bool>) -> Self {
        Self(key, path, read: { try $1.bool($0, $2) })
    }

    public static func string(_ key: String, _ path: WritableKeyPath<Config, String>) -> Self {
        Self(key, path, read: { try $1.string($0, $2) })
    }

    public static func string(_ key: String, _ path: WritableKeyPath<Config, String?>) -> Self {
        Self(key, path, read: { try $1.string($0, $2) })
    }

    /// A file or folder: in a config file, relative to the file's folder.
    public static func path(_ key: String, _ path: WritableKeyPath<Config, String?>) -> Self {
        Self(key, path, read: { try $1.path($0, $2) })
    }

    /// cpu, cuda or cuda:N (whether it can run here is checked where it is opened).
    public static func device(_ key: String, _ path: WritableKeyPath<Config, String>) -> Self {
        Self(key, path, read: { try $1.string($0, $2) }, problem: deviceProblem)
    }

    /// A list of strings (a repeatable flag); one string in a file is a list of one.
    public static func strings(_ key: String, _ path: WritableKeyPath<Config, [String]>) -> Self {
        Self(key, path, read: { value, reader, key in
            if value.type == .string { return [try reader.string(value, key)] }
            guard let array = value.array else { throw reader.expected(key, "a string or a list of strings", found: ConfigFile.Reader.kind(value)) }
            return try array.map { try reader.string($0, key) }
        })
    }

    public static func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ path: WritableKeyPath<Config, T>) -> Self
    where T.RawValue == String {
        Self(key, path, read: { try $1.choice($0, $2) })
    }
}
