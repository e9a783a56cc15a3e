import Foundation
import Testing

/// `textcraftor export` and `convert FOLDER`: whole models written in the original single-file layout (or as diffusers
/// folders) with fine-tuned encoders in them, read back bit for bit.
@Suite final class ExportCLITests {
    let scratch = temporaryOutput()
    static let fixtures = repository.appendingPathComponent("Tests/StableDiffusionTests/Fixtures")
    static let single = fixtures.appendingPathComponent("single")

    deinit { try? FileManager.default.removeItem(at: scratch) }

    func tensors(_ url: URL) throws -> [String: Data] { try safetensorsEntries(url) }

    func generate(_ model: [String], _ name: String) throws -> Data {
        let out = scratch.appendingPathComponent(name)
        let run = try textcraftor(["generate", "--prompt", "a red circle", "--steps", "3", "--seed", "7", "--scheduler", "ddim",
                                   "--save-latents", "--out", out.path] + model)
        #expect(run.status == 0, "\(run.err)")
        return (try? Data(contentsOf: out.appendingPathComponent("latents.safetensors"))) ?? Data()
    }

    /// A folder written as a single file holds exactly the tensors make_single_file_fixtures.py writes in the
    /// published layout (checked there with diffusers' from_single_file): the same keys but CLIP's position ids, which
    /// the published files carry, and the keys only a file has (SD 2's unused last block and projection, logit_scale).
    /// Converted back into a folder, every tensor is the original folder's, byte for byte.
    @Test(arguments: [("tiny-sd15", "sd/tiny-sd15", 0), ("tiny-sd2", "sd/tiny-sd2", 14), ("tiny-sdxl", "sdxl/tiny-sdxl", 1)])
    func aFolderRoundTripsThroughASingleFile(name: String, folder: String, onlyInPublished: Int) throws {
        let source = Self.fixtures.appendingPathComponent(folder)
        let file = scratch.appendingPathComponent("\(name).safetensors")
        let run = try textcraftor(["convert", source.path, "--out", file.path])
        #expect(run.status == 0, "\(run.err)")
        let ours = try tensors(file), published = try tensors(Self.single.appendingPathComponent("\(name).safetensors"))
        let extra = Set(ours.keys).subtracting(published.keys), missing = Set(published.keys).subtracting(ours.keys)
        #expect(extra.allSatisfy { $0.hasSuffix("text_model.embeddings.position_ids") } && extra.count == (name == "tiny-sd2" ? 0 : 1), "\(extra)")
        #expect(missing.count == onlyInPublished, "\(missing.sorted())")
        #expect(missing.allSatisfy { $0.hasSuffix("logit_scale") || $0.hasSuffix("text_projection") || $0.contains("resblocks.3.") })
        for key in Set(ours.keys).intersection(published.keys) { #expect(ours[key] == published[key], "\(key)") }

        let back = scratch.appendingPathComponent("\(name)-back")
        let again = try textcraftor(["convert", file.path, "--model-config", source.path, "--out", back.path])
        #expect(again.status == 0, "\(again.err)")
        var components = ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"]
        if name == "tiny-sdxl" { components.append("text_encoder_2/model.safetensors") }
        let older = [("attentions.0.query.", "attentions.0.to_q."), ("attentions.0.key.", "attentions.0.to_k."),
                     ("attentions.0.value.", "attentions.0.to_v."), ("attentions.0.proj_attn.", "attentions.0.to_out.0.")]
        // (The tiny SD 2's text encoder is a pytorch_model.bin: its tensors are checked above, against the published file.)
        for component in components where FileManager.default.fileExists(atPath: source.appendingPathComponent(component).path) {
            let a = try tensors(back.appendingPathComponent(component))
            var b: [String: Data] = [:]
            for (key, value) in try tensors(source.appendingPathComponent(component)) where !key.hasSuffix("position_ids") {
                // the tiny SD 2 VAE keeps diffusers' older attention names; the reader gives the current ones
                b[older.reduce(key) { $0.replacingOccurrences(of: $1.0, with: $1.1) }] = value
            }
            #expect(a.count == b.count && !a.isEmpty, "\(component)")
            for (key, value) in b { #expect(a[key] == value, "\(component) \(key)") }
        }
    }

    /// The authors' `module.`-prefixed .pth swapped into a single file: the file generates exactly what the folder
    /// with `--text-encoder FILE.pth` generates. On SDXL the second encoder, from a folder base.
    @Test func anExportedFineTuneGeneratesAsTheFineTunedEncoder() throws {
        let sd15 = Self.fixtures.appendingPathComponent("sd/tiny-sd15").path, sdxl = Self.fixtures.appendingPathComponent("sdxl/tiny-sdxl").path
        let pth = Self.single.appendingPathComponent("tc_text_tiny_sd15.pth").path
        let a = scratch.appendingPathComponent("a.safetensors").path
        let run = try textcraftor(["export", "--model", Self.single.appendingPathComponent("tiny-sd15.safetensors").path,
                                   "--model-config", sd15, "--text-encoder", pth, "--out", a])
        #expect(run.status == 0 && run.out.contains("SD 1.x single file, 722 tensors (text_encoder changed)"), "\(run.err)")
        let x = try generate(["--model", a, "--model-config", sd15], "a"), y = try generate(["--model", sd15, "--text-encoder", pth], "b")
        #expect(!x.isEmpty && x == y)
        // Only the encoder's tensors changed; every other key of the base file is copied as it was.
        let base = try tensors(Self.single.appendingPathComponent("tiny-sd15.safetensors")), exported = try tensors(URL(fileURLWithPath: a))
        #expect(Set(base.keys) == Set(exported.keys))
        #expect(base.filter { !$0.key.hasPrefix("cond_stage_model.") }.allSatisfy { exported[$0.key] == $0.value })
        #expect(base.filter { $0.key.hasPrefix("cond_stage_model.") && $0.key.hasSuffix(".weight") }.contains { exported[$0.key] != $0.value })

        let second = Self.single.appendingPathComponent("tc_text2_tiny_sdxl").path
        let b = scratch.appendingPathComponent("b.safetensors").path
        let xl = try textcraftor(["export", "--model", sdxl, "--text-encoder", second, "--out", b])
        #expect(xl.status == 0 && xl.out.contains("(text_encoder_2 changed)"), "\(xl.err)")
        let u = try generate(["--model", b, "--model-config", sdxl], "c"), v = try generate(["--model", sdxl, "--text-encoder", second], "d")
        #expect(!u.isEmpty && u == v)
    }

    /// --dtype float16: every floating-point tensor is the source's rounded to float16 (round to nearest even), the
    /// integer ones unchanged; --format diffusers writes a folder that generates as the file does.
    @Test func float16AndDiffusersFormats() throws {
        let sd15 = Self.fixtures.appendingPathComponent("sd/tiny-sd15").path
        let base = Self.single.appendingPathComponent("tiny-sd15.safetensors")
        let half = scratch.appendingPathComponent("half.safetensors")
        let run = try textcraftor(["export", "--model", base.path, "--model-config", sd15, "--dtype", "float16", "--out", half.path])
        #expect(run.status == 0, "\(run.err)")
        let data = try Data(contentsOf: half), (start, header) = try safetensorsHeader(data)
        let sourceData = try Data(contentsOf: base), (sourceStart, sourceHeader) = try safetensorsHeader(sourceData)
        var checked = 0
        for (name, entry) in sourceHeader where name != "__metadata__" {
            let e = entry as! [String: Any], h = header[name] as! [String: Any]
            let from = e["data_offsets"] as! [Int], to = h["data_offsets"] as! [Int]
            guard e["dtype"] as! String == "F32" else {
                #expect(h["dtype"] as! String == e["dtype"] as! String)
                continue
            }
            #expect(h["dtype"] as! String == "F16", "\(name)")
            let floats = sourceData.subdata(in: sourceStart + from[0]..<sourceStart + from[1]).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let halves = data.subdata(in: start + to[0]..<start + to[1]).withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
            #expect(floats.map { Float16($0).bitPattern } == halves, "\(name)")
            checked += 1
        }
        #expect(checked > 700)

        let folder = scratch.appendingPathComponent("folder")
        let f = try textcraftor(["export", "--model", base.path, "--model-config", sd15, "--format", "diffusers", "--out", folder.path])
        #expect(f.status == 0 && f.out.contains("SD 1.x as a diffusers folder"), "\(f.err)")
        let x = try generate(["--model", folder.path], "x"), y = try generate(["--model", base.path, "--model-config", sd15], "y")
        #expect(!x.isEmpty && x == y)
    }

    @Test func badRequestsAreOneLineAndWriteNothing() throws {
        let sd15 = Self.fixtures.appendingPathComponent("sd/tiny-sd15").path
        let out = scratch.appendingPathComponent("x.safetensors").path
        let cases: [([String], String)] = [
            (["--model", sd15, "--out", scratch.appendingPathComponent("x.ckpt").path],
             "Error: --out: \(scratch.appendingPathComponent("x.ckpt").path): a single file is written as .safetensors (or give --format diffusers and a folder)"),
            (["--model", sd15, "--embedding", "tok.pt", "--out", out],
             "Error: --embedding tok.pt: an embedding is not part of a checkpoint (front ends load it beside one: A1111 embeddings/, ComfyUI models/embeddings/, diffusers load_textual_inversion); copy the file next to the model instead"),
            (["--model", sd15, "--text-encoder", Self.single.appendingPathComponent("tc_text2_tiny_sdxl").path, "--out", out],
             "Error: --text-encoder: \(Self.single.appendingPathComponent("tc_text2_tiny_sdxl").path): is SDXL's text_encoder_2 (CLIPTextModelWithProjection), and a Stable Diffusion 1.x/2.x model has one text encoder"),
            (["--model", sd15, "--out", sd15], "Error: --out: \(sd15): already exists"),
        ]
        for (arguments, expected) in cases {
            let run = try textcraftor(["export"] + arguments)
            #expect(run.status != 0 && run.err.hasPrefix(expected) && run.err.split(separator: "\n").count == 1, "\(run.err)")
        }
        #expect(!FileManager.default.fileExists(atPath: out))
        // A config folder of another architecture is refused before anything is read or written.
        let xl = Self.single.appendingPathComponent("tiny-sdxl.safetensors").path, folder = scratch.appendingPathComponent("xl").path
        let convert = try textcraftor(["convert", xl, "--model-config", sd15, "--out", folder])
        #expect(convert.status != 0 && convert.err == "Error: --model-config: \(xl) is an SDXL checkpoint, and the config folder \(sd15) is a Stable Diffusion 1.x/2.x model\n", "\(convert.err)")
        #expect(!FileManager.default.fileExists(atPath: folder))
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: scratch.path))?.filter { $0.contains("partial") } ?? []
        #expect(leftovers.isEmpty)
    }
}
