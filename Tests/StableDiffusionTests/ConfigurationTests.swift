import Foundation
import Testing

@testable import StableDiffusion

@Suite struct ConfigurationTests {
    struct Sample: Codable, Equatable {
        let attention_head_dim: PerBlock<Int>
        let block_out_channels: [Int]
    }

    func write(_ text: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("config-\(UUID().uuidString).json")
        try Data(text.utf8).write(to: url)
        return url
    }

    @Test func perBlockAcceptsANumberOrAList() throws {
        let one = try decodeConfig(Sample.self, from: try write(#"{"attention_head_dim": 8, "block_out_channels": [32, 64]}"#))
        #expect(one.attention_head_dim.values(count: 2) == [8, 8])
        let each = try decodeConfig(Sample.self, from: try write(#"{"attention_head_dim": [5, 10], "block_out_channels": [32, 64]}"#))
        #expect(each.attention_head_dim.values(count: 2) == [5, 10])
    }

    @Test func errorsNameTheFileAndTheKey() throws {
        let missing = try write(#"{"attention_head_dim": 8}"#)
        #expect(throws: StableDiffusionError.invalidConfig(file: missing.path, message: "missing key \"block_out_channels\"")) {
            try decodeConfig(Sample.self, from: missing)
        }
        let wrongType = try write(#"{"attention_head_dim": 8, "block_out_channels": "wide"}"#)
        #expect(throws: StableDiffusionError.invalidConfig(file: wrongType.path, message: "key \"block_out_channels\" is not a Array<Any>")) {
            try decodeConfig(Sample.self, from: wrongType)
        }
        let broken = try write("{not json")
        #expect(throws: StableDiffusionError.invalidConfig(file: broken.path, message: "not valid JSON")) {
            try decodeConfig(Sample.self, from: broken)
        }
        #expect(throws: StableDiffusionError.missingFile("/nonexistent/config.json")) {
            try decodeConfig(Sample.self, from: URL(fileURLWithPath: "/nonexistent/config.json"))
        }
    }
}
