import ArgumentParser
import Foundation
import Torch

@main
struct TextCraftor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "textcraftor",
        abstract: "Fine-tune Stable Diffusion's CLIP text encoder against differentiable rewards (TextCraftor, CVPR 2024).",
        discussion: """
            TextCraftor freezes the UNet and the VAE and trains only the text encoder, so that images sampled from the \
            frozen model score higher on reward models (aesthetics, PickScore, HPSv2, CLIP alignment). The fine-tuned \
            encoder is a drop-in replacement for the original.

            Start with `textcraftor doctor` to check the installation.
            """,
        subcommands: [Train.self, Generate.self, Score.self, Eval.self, Tokenize.self, Inspect.self, Merge.self, Convert.self, Export.self, Doctor.self, Bench.self, SynthModel.self, Shapes.self, Demo.self, StudyCommand.self]
    )

    /// As ArgumentParser's, but every failure is one short, safe line: a bad flag value prints its message without
    /// the usage block (`--help` says the rest), and any message is cut to 400 characters with control characters
    /// escaped (a 5000-character path or an escape code in a name stays harmless), so scripts and logs see one
    /// `Error: ...` line; status 1 like every other error (an explicit `ExitCode` keeps its own).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is CleanExit { exit(withError: error) }  // --help, --version
            let message = excerpt(message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)", limit: 400)
            FileHandle.standardError.write(Data("Error: \(message)\n".utf8))
            Foundation.exit(code == .validationFailure ? 1 : code.rawValue)
        }
    }
}

/// A user-facing failure of a command: ArgumentParser prints it as one line and exits with status 1.
struct CommandError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
