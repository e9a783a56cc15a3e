import Foundation

/// What a user can get wrong when training: prompt files, data, configs, flags, output and resume folders.
/// `description` is one line naming the file, the key or the flag.
public enum TextCraftorError: Error, CustomStringConvertible, Equatable, Sendable {
    case invalidPrompts(file: String, message: String)
    case invalidData(file: String, message: String)
    case invalidConfig(file: String, message: String)
    case invalidArgument(String)
    /// A configuration value out of its range: names the key as the config file spells it (`batch_size`).
    case invalidSetting(key: String, message: String)
    case invalidCheckpoint(folder: String, message: String)
    case nonFinite(step: Int, what: String)
    /// Data-parallel training failed: a rank stopped, or the ranks drifted apart.
    case distributed(String)

    public var description: String {
        switch self {
        case .invalidPrompts(let file, let message): "\(file): \(message)"
        case .invalidData(let file, let message): "\(file): \(message)"
        case .invalidConfig(let file, let message): "\(file): \(message)"
        case .invalidArgument(let message): message
        case .invalidSetting(let key, let message): "\(key): \(message)"
        case .invalidCheckpoint(let folder, let message): "\(folder): \(message)"
        case .nonFinite(let step, let what):
            "step \(step): the \(what) is not finite; stopped, the last good checkpoint is kept"
        case .distributed(let message): message + "; stopped, the last good checkpoint is kept"
        }
    }
}
