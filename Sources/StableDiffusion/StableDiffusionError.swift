import Foundation

/// What a user can get wrong when loading or running Stable Diffusion: files, configs, prompts, arguments. The
/// `description` is one line that names the file and the key, or the flag.
public enum StableDiffusionError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A file or folder that should be there is not.
    case missingFile(String)
    /// A model component folder without any of the weight files it may hold; `lookedFor` lists them in order.
    case missingWeights(folder: String, lookedFor: [String])
    /// A config file that cannot be read or decoded; `message` names the key.
    case invalidConfig(file: String, message: String)
    /// A config value this implementation does not support, with the values it does.
    case unsupported(file: String, key: String, value: String, supported: [String])
    /// Tokenizer files that cannot be used.
    case invalidTokenizer(file: String, message: String)
    /// A bad argument (a flag, an option, a prompt); `message` names it.
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .missingFile(let path): "\(path): no such file or folder"
        case .missingWeights(let folder, let lookedFor):
            "\(folder): no weights file (looked for \(lookedFor.joined(separator: ", ")))"
        case .invalidConfig(let file, let message): "\(file): \(message)"
        case .unsupported(let file, let key, let value, let supported):
            "\(file): \(key) \"\(value)\" is not supported (supported: \(supported.joined(separator: ", ")))"
        case .invalidTokenizer(let file, let message): "\(file): \(message)"
        case .invalidArgument(let message): message
        }
    }
}
