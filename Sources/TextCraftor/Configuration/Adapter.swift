/// What of the trained text encoder(s) the optimizer changes: every weight (`full`, TextCraftor), or only the
/// embedding rows of one new token (`token`: textual inversion against the rewards, `TokenAdapter`), the encoders
/// otherwise frozen.
public enum Adapter: String, CaseIterable, Sendable, Codable {
    case full
    case token
}
