import Foundation
import Testing

/// The fast subset of scripts/fuzz/fuzz.py (the classes that fail or finish in under a second each): mutated
/// checkpoints, pickles, prompts, images, reward specs and TOML files through the built binary. Every input must end
/// in a clean one-line error or be accepted: no crash, hang, messy error or memory blow-up.
@Suite struct FuzzCLITests {
    static let python = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: python != nil, "no python3 to run scripts/fuzz/fuzz.py"))
    func quickFuzzFindsNothing() throws {
        var products = Bundle.main.bundleURL
        while !FileManager.default.fileExists(atPath: products.appendingPathComponent("textcraftor").path) { products.deleteLastPathComponent() }
        let findings = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: findings) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.python!)
        process.arguments = [repository.appendingPathComponent("scripts/fuzz/fuzz.py").path, "--quick", "--count", "60", "--seed", "11",
                             "--jobs", "1", "--timeout", "120", "--binary", products.appendingPathComponent("textcraftor").path,
                             "--keep", findings.path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let report = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(report)")
        #expect(report.contains("60 inputs, no findings"), "\(report)")
        #expect(report.contains("| all | 60 |"), "\(report)")
    }
}
