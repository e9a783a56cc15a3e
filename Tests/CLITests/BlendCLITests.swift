import Foundation
import Testing

/// `textcraftor generate --text-encoder/--blend/--mix/--finetuned-steps` on the tiny SD 1.5 folder. The "fine-tuned"
/// encoder is the tiny one with 0.5 added to `final_layer_norm.bias`, edited in its safetensors bytes (this target
/// runs the binary and links no torch).
@Suite final class BlendCLITests {
    let scratch: URL
    /// A fine-tuned encoder folder: config.json + model.safetensors.
    let finetuned: URL

    init() throws {
        scratch = temporaryOutput()
        finetuned = scratch.appendingPathComponent("finetuned")
        try FileManager.default.createDirectory(at: finetuned, withIntermediateDirectories: true)
        let source = URL(fileURLWithPath: tinySD15).appendingPathComponent("text_encoder")
        try FileManager.default.copyItem(at: source.appendingPathComponent("config.json"), to: finetuned.appendingPathComponent("config.json"))
        var data = try Data(contentsOf: source.appendingPathComponent("model.safetensors"))
        let (base, header) = try safetensorsHeader(data)
        let entry = header["text_model.final_layer_norm.bias"] as! [String: Any]
        let offsets = entry["data_offsets"] as! [Int]
        for at in stride(from: base + offsets[0], to: base + offsets[1], by: 4) {
            let value = Float(bitPattern: UInt32(littleEndian: data[at..<at + 4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
            withUnsafeBytes(of: (value + 0.5).bitPattern.littleEndian) { data.replaceSubrange(at..<at + 4, with: $0) }
        }
        try data.write(to: finetuned.appendingPathComponent("model.safetensors"))
    }

    deinit { try? FileManager.default.removeItem(at: scratch) }

    func generate(_ flags: [String], out name: String) throws -> (run: (status: Int32, out: String, err: String), out: URL) {
        let out = scratch.appendingPathComponent(name)
        let run = try textcraftor(["generate", "--model", tinySD15, "--prompt", "a red circle", "--negative-prompt", "blurry",
                                   "--steps", "3", "--seed", "7", "--scheduler", "ddim", "--out", out.path] + flags)
        return (run, out)
    }

    func metadata(_ out: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("metadata.json"))) as! [String: Any]
    }

    func image(_ out: URL) throws -> Data { try Data(contentsOf: out.appendingPathComponent("0000.png")) }

    @Test func blendWritesItsSettingsAndTheOriginalEmbeddings() throws {
        let (run, out) = try generate(["--text-encoder", finetuned.path, "--blend", "0.5", "--finetuned-steps", "2", "--save-latents"],
                                      out: "blend")
        #expect(run.status == 0, "\(run.err)")
        let m = try metadata(out)
        #expect(m["text_encoder"] as? String == finetuned.path)
        #expect(m["blend"] as? Double == 0.5)
        #expect(m["finetuned_steps"] as? Int == 2)
        #expect(m["unet_calls"] as? Int == 3)
        #expect(m["mix"] is NSNull)
        let keys = try safetensorsHeader(Data(contentsOf: out.appendingPathComponent("latents.safetensors"))).header.keys
        #expect(Set(keys).subtracting(["__metadata__"]) == [
            "init_latents", "latents", "prompt_embeds", "negative_prompt_embeds", "original_prompt_embeds",
            "original_negative_prompt_embeds",
        ])
        #expect(run.err.contains("generate 100% 3/3"))
    }

    @Test func blendZeroIsThePlainImageAndHalfIsNot() throws {
        let plain = try generate([], out: "plain")
        #expect(plain.run.status == 0, "\(plain.run.err)")
        let m = try metadata(plain.out)
        #expect(m["text_encoder"] is NSNull && m["blend"] is NSNull && m["mix"] is NSNull && m["finetuned_steps"] is NSNull)
        let zero = try generate(["--text-encoder", finetuned.path, "--blend", "0"], out: "zero")
        #expect(zero.run.status == 0, "\(zero.run.err)")
        #expect(try image(zero.out) == image(plain.out))
        let half = try generate(["--text-encoder", finetuned.path, "--blend", "0.5"], out: "half")
        #expect(try image(half.out) != image(plain.out))
        // --text-encoder alone is blend 1 for every call.
        let full = try generate(["--text-encoder", finetuned.path], out: "full")
        let fm = try metadata(full.out)
        #expect(fm["blend"] as? Double == 1 && fm["finetuned_steps"] as? Int == 3)
        #expect(try image(full.out) != image(half.out))
    }

    @Test func mixWritesItsEntriesAndMatchesTheBlend() throws {
        let mix = try generate(["--mix", "original=0.5,\(finetuned.path)=0.5"], out: "mix")
        #expect(mix.run.status == 0, "\(mix.run.err)")
        let entries = try metadata(mix.out)["mix"] as! [[String: Any]]
        #expect(entries.map { $0["encoder"] as? String } == ["original", finetuned.path])
        #expect(entries.map { $0["weight"] as? Double } == [0.5, 0.5])
        #expect(try metadata(mix.out)["text_encoder"] is NSNull)
        let blend = try generate(["--text-encoder", finetuned.path, "--blend", "0.5"], out: "blend-half")
        #expect(try image(mix.out) == image(blend.out))
        let scaled = try generate(["--mix", "original=0.5"], out: "scaled")
        #expect(scaled.run.status == 0)
        #expect(scaled.run.err.contains("warning: --mix weights sum to 0.5, not 1: the embeddings are scaled by it"))
    }

    /// FT: the fine-tuned folder; WIDE: a config with hidden_size 16 (no weights); EMPTY: a folder without config.json.
    @Test(arguments: [
        (["--blend", "0.5"], "Error: --blend: needs text_encoder"),
        (["--text-encoder", "FT", "--blend", "abc"], #"Error: --blend: "abc" is not a number"#),
        (["--text-encoder", "FT", "--blend", "nan"], #"Error: --blend: "nan" is not a number"#),
        (["--text-encoder", "FT", "--blend=-0.5"], "Error: --blend: expected a number >= 0, found -0.5"),
        (["--mix", "original=1", "--text-encoder", "FT"], "Error: --mix: cannot be used with text_encoder or blend"),
        (["--mix", "original=0.5,FT"], #"Error: --mix: entry "FT": expected DIR=W (the model's own encoder is named original)"#),
        (["--mix", "original=0.5,=0.5"], #"Error: --mix: entry "=0.5": expected DIR=W (the model's own encoder is named original)"#),
        (["--mix", "original=0.5,FT=half"], #"Error: --mix: entry "FT=half": weight "half" is not a number"#),
        (["--mix", "original=1.5,FT=-0.5"], #"Error: --mix: entry "FT=-0.5": weight must not be negative (got -0.5)"#),
        (["--mix", "original=0.5,original=0.5"], #"Error: --mix: names "original" twice"#),
        (["--mix", "original=0.5,/nonexistent/encoder=0.5"], "Error: /nonexistent/encoder: no such file or folder"),
        (["--text-encoder", "/nonexistent/encoder"], "Error: /nonexistent/encoder: no such file or folder"),
        (["--text-encoder", "EMPTY"], "Error: EMPTY/config.json: no such file or folder"),
        (["--text-encoder", "WIDE"], "Error: WIDE/config.json: hidden_size 16 does not match the model's text encoder (32)"),
        (["--mix", "original=0.5,WIDE=0.5"], "Error: WIDE/config.json: hidden_size 16 does not match the model's text encoder (32)"),
        (["--text-encoder", "FT", "--finetuned-steps", "4"],
         "Error: --finetuned-steps must be between 0 and 3 (the scheduler's UNet calls); got 4"),
        (["--text-encoder", "FT", "--finetuned-steps=-1", "--scheduler", "pndm"],
         "Error: --finetuned-steps must be between 0 and 4 (the scheduler's UNet calls); got -1"),
        (["--finetuned-steps", "2"], "Error: --finetuned-steps: needs text_encoder or mix"),
    ])
    func badEncoderFlagsFailInOneLineAndWriteNothing(flags: [String], message: String) throws {
        let empty = scratch.appendingPathComponent("empty"), wide = scratch.appendingPathComponent("wide")
        try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: wide, withIntermediateDirectories: true)
        try #"{"hidden_size": 16, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 3, "vocab_size": 1000}"#
            .write(to: wide.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
        func substitute(_ s: String) -> String {
            s.replacingOccurrences(of: "FT", with: finetuned.path).replacingOccurrences(of: "EMPTY", with: empty.path)
                .replacingOccurrences(of: "WIDE", with: wide.path)
        }
        let (run, out) = try generate(flags.map(substitute), out: "bad")
        #expect(run.status == 1)
        #expect(run.err.trimmingCharacters(in: .whitespacesAndNewlines) == substitute(message))
        #expect(!FileManager.default.fileExists(atPath: out.path), "the output folder was created")
    }
}

/// The byte offset of a safetensors file's data and its JSON header.
func safetensorsHeader(_ data: Data) throws -> (base: Int, header: [String: Any]) {
    let length = Int(UInt64(littleEndian: data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }))
    let header = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<8 + length)) as! [String: Any]
    return (8 + length, header)
}

/// name -> "dtype shape" followed by the raw bytes of each tensor of a safetensors file: equal entries are equal
/// tensors, bit for bit.
func safetensorsEntries(_ url: URL) throws -> [String: Data] {
    let data = try Data(contentsOf: url)
    let (base, header) = try safetensorsHeader(data)
    var out: [String: Data] = [:]
    for (name, entry) in header where name != "__metadata__" {
        let e = entry as! [String: Any], offsets = e["data_offsets"] as! [Int]
        out[name] = Data("\(e["dtype"]!) \(e["shape"]!)".utf8) + data.subdata(in: base + offsets[0]..<base + offsets[1])
    }
    return out
}
