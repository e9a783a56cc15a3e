import Foundation
import Rewards
import TOMLKit

/// A TOML file of a `Configuration`, keyed like the flags without the dashes (`grad_window = 5`).
///
/// ```toml
/// mode = "prompt"
/// model = "models/sd15"          # paths are relative to this file's folder
/// prompts = "prompts.txt"
/// out = "runs/aesthetic"
/// lr = 1e-6
/// batch_size = 4
/// betas = [0.9, 0.999]
///
/// [[reward]]
/// name = "aesthetic"
/// paths = ["clip-vit-large-patch14", "sac+logos+ava1-l14-linearMSE.pth"]
/// gamma = 1.0
/// scale = 3.0
/// ```
///
/// An unknown key is an error (a typo must not pass silently), and so is a value of the wrong type or range; every
/// message names the file and the key. Keys the file does not give keep `C()`'s defaults.
public enum ConfigFile {
    /// Reads a config file. Relative paths in it are taken from the file's folder, so the file works from anywhere.
    public static func load<C: Configuration>(_ url: URL, as type: C.Type = C.self) throws -> C {
        let text = try readText(url, what: "a config file") { .invalidConfig(file: url.path, message: $0) }
        return try parse(text, file: url.path, folder: url.deletingLastPathComponent())
    }

    /// Parses a config's text; `file` names it in errors, relative paths are resolved against `folder`.
    public static func parse<C: Configuration>(_ text: String, file: String, folder: URL, as type: C.Type = C.self) throws -> C {
        let reader = Reader(file: file, folder: folder)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            // toml++ quotes the character it saw, a newline included: keep the message on one line.
            let reason = error.description.replacingOccurrences(of: "\r", with: "\\r").replacingOccurrences(of: "\n", with: "\\n")
            throw reader.fail("line \(error.source.begin.line), column \(error.source.begin.column): \(reason)")
        }
        var config = C()
        for key in table.keys.sorted() {
            guard let field = C.fields.first(where: { $0.key == key }) else { throw reader.unknown(key, known: C.keys) }
            try field.read(table[key]!, reader, &config)
        }
        return config
    }

    /// Reads typed values out of TOML, with errors that name the file, the key and the expected type.
    public struct Reader {
        let file: String
        let folder: URL

        func fail(_ message: String) -> TextCraftorError { .invalidConfig(file: file, message: message) }

        func expected(_ key: String, _ what: String, found: String) -> TextCraftorError {
            fail("key \"\(key)\": expected \(what), found \(found)")
        }

        func unknown(_ key: String, known: [String]) -> TextCraftorError {
            let name = key.split(separator: ".").last.map(String.init) ?? key
            let aliases = ["learning_rate": "lr", "rewards": "reward", "steps": "sampling_steps", "path": "paths"]
            let near = aliases[name].flatMap { known.contains($0) ? $0 : nil }
                ?? known.map { ($0, editDistance(name, $0)) }.filter { $0.1 <= 2 }.min { $0.1 < $1.1 }?.0
            return fail("unknown key \"\(key)\"" + (near.map { " (did you mean \"\($0)\"?)" } ?? ""))
        }

        func number(_ value: TOMLValueConvertible, _ key: String, _ bound: Bound) throws -> Double {
            let number: Double
            switch value.type {
            case .double: number = value.double!
            case .int: number = Double(value.int!)
            default: throw expected(key, bound.phrase(integer: false), found: Self.kind(value))
            }
            if let problem = bound.problem(number, integer: false) { throw fail("key \"\(key)\": \(problem)") }
            return number
        }

        func integer(_ value: TOMLValueConvertible, _ key: String, _ bound: Bound) throws -> Int {
            guard let integer = value.int else { throw expected(key, bound.phrase(integer: true), found: Self.kind(value)) }
            if let problem = bound.problem(Double(integer), integer: true) { throw fail("key \"\(key)\": \(problem)") }
            return integer
        }

        func bool(_ value: TOMLValueConvertible, _ key: String) throws -> Bool {
            guard let bool = value.bool else { throw expected(key, "true or false", found: Self.kind(value)) }
            return bool
        }

        func string(_ value: TOMLValueConvertible, _ key: String) throws -> String {
            guard let string = value.string else { throw expected(key, "a string", found: Self.kind(value)) }
            return string
        }

        func choice<T: RawRepresentable & CaseIterable>(_ value: TOMLValueConvertible, _ key: String) throws -> T
        where T.RawValue == String {
            let choices = alternatives(T.allCases.map(\.rawValue))
            guard let string = value.string else { throw expected(key, choices, found: Self.kind(value)) }
            guard let choice = T(rawValue: string) else { throw expected(key, choices, found: "\"\(string)\"") }
            return choice
        }

        /// A path: `~` expanded, relative ones taken from the config file's folder.
        func path(_ value: TOMLValueConvertible, _ key: String) throws -> String {
            let path = NSString(string: try string(value, key)).expandingTildeInPath
            return path.hasPrefix("/") ? path : folder.appendingPathComponent(path).standardizedFileURL.path
        }

        func betas(_ value: TOMLValueConvertible, _ key: String) throws -> AdamBetas {
            let what = "a list of 2 numbers in [0, 1)"
            guard let array = value.array else { throw expected(key, what, found: Self.kind(value)) }
            guard array.count == 2 else { throw expected(key, what, found: "a list of \(array.count)") }
            let pair = try array.map { try number($0, key, .unit) }
            return AdamBetas(pair[0], pair[1])
        }

        /// `[LOW, HIGH]`: two integers (their range is checked by `validate()`).
        func timestepRange(_ value: TOMLValueConvertible, _ key: String) throws -> TimestepRange {
            try integerPair(value, key, "[LOW, HIGH]")
        }

        /// `[TOP, LEFT]`: two integers (their range is checked by `validate()`).
        func crop(_ value: TOMLValueConvertible, _ key: String) throws -> CropCoordinates {
            try integerPair(value, key, "[TOP, LEFT]")
        }

        /// Two non-negative integers, `names` saying which in messages.
        func integerPair<P: NumberPair>(_ value: TOMLValueConvertible, _ key: String, _ names: String) throws -> P
        where P.Number == Int {
            let what = "a list of 2 integers \(names)"
            guard let array = value.array else { throw expected(key, what, found: Self.kind(value)) }
            guard array.count == 2 else { throw expected(key, what, found: "a list of \(array.count)") }
            let pair = try array.map { try integer($0, key, .nonNegative) }
            return P(pair: pair[0], pair[1])
        }

        /// `[[reward]]` tables (or one `[reward]` table): name, paths, gamma (default 1), scale (default: the reward's).
        func rewards(_ value: TOMLValueConvertible) throws -> [RewardOption] {
            let tables: [TOMLValueConvertible]
            switch value.type {
            case .table: tables = [value]
            case .array: tables = Array(value.array!)
            default: throw expected("reward", "a list of tables ([[reward]])", found: Self.kind(value))
            }
            return try tables.enumerated().map { index, item in
                let prefix = "reward[\(index)]"
                guard let table = item.table else { throw expected(prefix, "a table", found: Self.kind(item)) }
                var reward = RewardOption(name: "", paths: [])
                var named = false, hasPaths = false
                for key in table.keys.sorted() {
                    let value = table[key]!, path = "\(prefix).\(key)"
                    switch key {
                    case "name":
                        reward.name = try string(value, path)
                        guard RewardRegistry.names.contains(reward.name) else {
                            throw expected(path, alternatives(RewardRegistry.names), found: "\"\(reward.name)\"")
                        }
                        named = true
                    case "paths":
                        let what = "a string or a list of strings"
                        if value.type == .string {
                            reward.paths = [try self.path(value, path)]
                        } else if let array = value.array {
                            reward.paths = try array.map { try self.path($0, path) }
                        } else {
                            throw expected(path, what, found: Self.kind(value))
                        }
                        hasPaths = true
                    case "gamma": reward.gamma = try number(value, path, .any)
                    case "scale": reward.scale = try number(value, path, .any)
                    default: throw unknown(path, known: RewardOption.keys)
                    }
                }
                guard named else { throw fail("\(prefix): no \"name\" key") }
                guard hasPaths else { throw fail("\(prefix): no \"paths\" key") }
                return reward
            }
        }

        /// "a string", "an integer", ...: for "found ..." in messages.
        static func kind(_ value: TOMLValueConvertible) -> String {
            switch value.type {
            case .string: "a string"
            case .int: "an integer"
            case .double: "a float"
            case .bool: "a boolean"
            case .array: "a list"
            case .table: "a table"
            case .date: "a date"
            case .time: "a time"
            case .dateTime: "a date-time"
            }
        }
    }
}

/// `"a", "b" or "c"`.
func alternatives(_ names: [String]) -> String {
    let quoted = names.map { "\"\($0)\"" }
    return quoted.count < 2 ? quoted.joined() : quoted.dropLast().joined(separator: ", ") + " or " + quoted.last!
}

/// Levenshtein distance, for "did you mean" on unknown keys.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    guard !a.isEmpty else { return b.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in stride(from: 1, through: b.count, by: 1) {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}
