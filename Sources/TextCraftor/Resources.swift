import Foundation

/// Data shipped with the package.
public enum TextCraftorResources {
    /// The Parti-Prompts benchmark (1632 prompts; columns Prompt, Category, Challenge, Note; Apache-2.0), or nil
    /// when the binary was installed without its resource bundle.
    public static var partiPrompts: URL? {
        Bundle.module.url(forResource: "PartiPrompts", withExtension: "tsv", subdirectory: "Resources")
    }
}
