import Foundation
import NN
import Testing
import Torch

let fixtures = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

/// The tiny module tree of scripts/parity/make_nn_fixtures.py, built from a VarBuilder.
final class Tiny: Module {
    let scope: ParameterScope
    let embed: Embedding, norm: LayerNorm, fc: Linear
    let selfAttention: MultiHeadAttention, crossAttention: MultiHeadAttention
    let conv: Conv2d, groupNorm: GroupNorm, depthwise: Conv2d

    init(_ vb: VarBuilder) {
        scope = vb.scope
        embed = Embedding(vb.pp("embed"), count: 12, dimension: 8)
        norm = LayerNorm(vb.pp("norm"), size: 8)
        selfAttention = MultiHeadAttention(vb.pp("self_attn"), dimension: 8, heads: 2)
        crossAttention = MultiHeadAttention(
            vb.pp("cross_attn"), dimension: 8, heads: 4, contextDim: 6, names: .diffusers, projectionBias: false)
        fc = Linear(vb.pp("fc"), inFeatures: 8, outFeatures: 5)
        conv = Conv2d(vb.pp("conv"), inChannels: 3, outChannels: 6, kernelSize: 3, stride: 2, padding: 1)
        groupNorm = GroupNorm(vb.pp("gn"), groups: 3, channels: 6, eps: 1e-6)
        depthwise = Conv2d(vb.pp("conv_dw"), inChannels: 6, outChannels: 6, kernelSize: 3, padding: 1, groups: 3, bias: false)
    }
}

func io(_ name: String) throws -> Tensor {
    try SafeTensorsFile(url: fixtures.appendingPathComponent("tiny_io.safetensors")).tensor(name)
}

func maxDifference(_ a: Tensor, _ b: Tensor) -> Double { (a - b).abs().max().item() }

@Suite struct NNTests {
    func load(_ file: String) throws -> Tiny {
        try VarBuilder(try Weights.open(fixtures.appendingPathComponent(file))).build(Tiny.init)
    }

    @Test(arguments: ["tiny.safetensors", "tiny.bin"])
    func layersMatchPyTorch(file: String) throws {
        let m = try load(file)
        let h = m.norm(m.embed(try io("ids")))
        #expect(maxDifference(h, try io("embedded")) < 1e-6)
        let a = m.selfAttention(h, mask: try io("mask"))
        #expect(maxDifference(a, try io("self_attn")) < 1e-6)
        #expect(maxDifference(m.selfAttention(h, isCausal: true), try io("causal")) < 1e-6)
        let c = m.crossAttention(h, context: try io("context"))
        #expect(maxDifference(c, try io("cross_attn")) < 1e-6)
        #expect(maxDifference(m.fc(h + a + c), try io("logits")) < 1e-6)
        let y = m.depthwise(m.groupNorm(m.conv(try io("image"))).silu())
        #expect(maxDifference(y, try io("conv_out")) < 1e-5)
    }

    @Test func parametersKeepCheckpointNames() throws {
        let m = try load("tiny.safetensors")
        let names = m.namedParameters.map(\.name)
        #expect(names.count == 23)
        #expect(names.contains("cross_attn.to_out.0.weight"))
        #expect(m.selfAttention.namedParameters.map(\.name).sorted() == [
            "k_proj.bias", "k_proj.weight", "out_proj.bias", "out_proj.weight", "q_proj.bias", "q_proj.weight",
            "v_proj.bias", "v_proj.weight",
        ])
        #expect(m.trainableParameters.isEmpty)  // loaded models start frozen
    }

    @Test func missingAndUnusedKeysAreReportedTogether() throws {
        final class Wrong: Module {
            let scope: ParameterScope
            init(_ vb: VarBuilder) {
                scope = vb.scope
                _ = Linear(vb.pp("fc"), inFeatures: 8, outFeatures: 5)
                _ = LayerNorm(vb.pp("final_norm"), size: 8)
            }
        }
        let url = fixtures.appendingPathComponent("tiny.safetensors")
        let source = try Weights.open(url)
        do {
            _ = try VarBuilder(source).build(Wrong.init)
            Issue.record("loading a model that does not fit did not fail")
        } catch let error as WeightLoadingError {
            let unused = source.keys.filter { !$0.hasPrefix("fc.") }
            #expect(error.description == "\(url.path) does not fit the model: 2 missing keys: final_norm.weight [8], final_norm.bias [8]; \(unused.count) unused keys: \(unused.joined(separator: ", "))")
        }
    }

    /// A checkpoint with hundreds of keys the model does not know, named with escape codes: one short line, the first
    /// key quoted as an escaped excerpt and the rest counted.
    @Test func longMismatchListsAreCutAndKeysEscaped() throws {
        final class Small: Module {
            let scope: ParameterScope
            init(_ vb: VarBuilder) {
                scope = vb.scope
                _ = Linear(vb.pp("fc"), inFeatures: 8, outFeatures: 7)
            }
        }
        let name = "\u{1B}[2J" + String(repeating: "k", count: 200)
        let tensors = Dictionary(uniqueKeysWithValues: (0..<300).map { (name + "." + String(1000 + $0).dropFirst(), Tensor.zeros([1])) })
        do {
            _ = try VarBuilder(TensorDictionary(tensors, origin: "wrong.safetensors")).build(Small.init)
            Issue.record("loaded")
        } catch {
            #expect("\(error)" == "wrong.safetensors does not fit the model: 2 missing keys: fc.weight [7, 8], … (1 more); "
                + "300 unused keys: \\u{1b}[2J" + String(repeating: "k", count: 56) + "…(148 more characters), … (299 more)")
        }
    }

    @Test func shapeMismatchNamesTheFullKeyAndBothShapes() throws {
        final class WrongWidth: Module {
            let scope: ParameterScope
            init(_ vb: VarBuilder) {
                scope = vb.scope
                _ = Linear(vb.pp("fc"), inFeatures: 8, outFeatures: 7)
            }
        }
        let url = fixtures.appendingPathComponent("tiny.safetensors")
        let tensors = try Tensor.load(safetensors: url).filter { $0.key.hasPrefix("fc.") }
        #expect(throws: WeightLoadingError.self) { try VarBuilder(TensorDictionary(tensors)).build(WrongWidth.init) }
        do {
            _ = try VarBuilder(TensorDictionary(tensors, origin: "fc.safetensors")).build(WrongWidth.init)
        } catch {
            #expect("\(error)" == "fc.safetensors does not fit the model: 'fc.weight' has shape [5, 8] in the checkpoint, the model expects [7, 8]; 'fc.bias' has shape [5] in the checkpoint, the model expects [7]")
        }
    }


    /// `VarBuilder.load` builds on `.meta` from the header first, so a model larger than its weights (a UNet config
    /// with wider blocks than the file, say) is refused before anything is allocated: the real build never runs.
    @Test func loadChecksShapesOnMetaBeforeAllocating() throws {
        let url = fixtures.appendingPathComponent("tiny.safetensors")
        let tensors = try Tensor.load(safetensors: url).filter { $0.key.hasPrefix("fc.") }
        var devices: [Device] = []
        #expect(throws: WeightLoadingError.self) {
            _ = try VarBuilder.load(TensorDictionary(tensors)) { vb -> Linear in
                devices.append(vb.device)
                return Linear(vb.pp("fc"), inFeatures: 8, outFeatures: 1 << 30)  // 34 GB as float32, were it built
            }
        }
        #expect(devices == [.meta])
        devices = []
        let fitting = try VarBuilder.load(TensorDictionary(tensors)) { vb -> Linear in
            devices.append(vb.device)
            return Linear(vb.pp("fc"), inFeatures: 8, outFeatures: 5)
        }
        #expect(devices == [.meta, .cpu])
        #expect(fitting.weight.device == .cpu && fitting.weight.shape == [5, 8])
    }
    @Test func aliasesFindTheOldName() throws {
        let weights = ["attn.query.weight": Tensor.ones([4, 4]), "attn.query.bias": Tensor.zeros([4])]
        let vb = VarBuilder(TensorDictionary(weights)).pp("attn")
        let w = vb.get([4, 4], "to_q.weight", aliases: ["query.weight"])
        let b = vb.get([4], "to_q.bias", aliases: ["query.bias"])
        try vb.finish()
        #expect(w.sum().item() == 16)
        #expect(b.shape == [4])
        #expect(vb.scope.namedTensors.map(\.name) == ["to_q.weight", "to_q.bias"])  // handed out under the new name
    }

    @Test func legacyProjectionNamesLoadUnderTheNewNames() throws {
        // The same attention stored under diffusers' names and under the VAE's pre-0.14 names gives the same output.
        let fresh = MultiHeadAttention(
            VarBuilder(initializingWith: Generator(seed: 7)).pp("attn"), dimension: 8, heads: 1, names: .diffusers)
        let renames = ["to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"]
        var old: [String: Tensor] = [:]
        for (name, tensor) in fresh.stateDict(prefix: "attn") {
            let renamed = renames.reduce(name) { $0.replacingOccurrences(of: ".\($1.key).", with: ".\($1.value).") }
            old[renamed] = tensor
        }
        #expect(old["attn.proj_attn.weight"] != nil)
        let legacy = MultiHeadAttention.ProjectionNames(query: "query", key: "key", value: "value", output: "proj_attn")
        let vb = VarBuilder(TensorDictionary(old))
        let loaded = try vb.build {
            MultiHeadAttention($0.pp("attn"), dimension: 8, heads: 1, names: .diffusers, legacyNames: legacy)
        }
        #expect(loaded.namedParameters.map(\.name).sorted() == fresh.namedParameters.map(\.name).sorted())
        let x = Tensor.randn([2, 5, 8], generator: Generator(seed: 8))
        #expect(maxDifference(loaded(x), fresh(x)) == 0)
        // The new names still load as they are.
        _ = try VarBuilder(TensorDictionary(fresh.stateDict(prefix: "attn"))).build {
            MultiHeadAttention($0.pp("attn"), dimension: 8, heads: 1, names: .diffusers, legacyNames: legacy)
        }
    }

    @Test func upcastAttentionRunsHalfPrecisionScoresInFloat32() throws {
        let vb = VarBuilder(initializingWith: Generator(seed: 9))
        let attention = MultiHeadAttention(vb, dimension: 8, heads: 2, names: .diffusers, upcast: true)
        let x = Tensor.randn([1, 6, 8], generator: Generator(seed: 10)) * 30  // large scores
        let reference = attention(x)
        let half = MultiHeadAttention(
            VarBuilder(TensorDictionary(attention.stateDict()), dtype: .bfloat16), dimension: 8, heads: 2,
            names: .diffusers, upcast: true)
        let out = half(x.to(.bfloat16))
        #expect(out.dtype == .bfloat16)
        #expect(maxDifference(out.to(.float32), reference) < 0.05 * reference.abs().max().item())
    }

    @Test func trainableSubmoduleGetsGradientsAndTheRestStaysFrozen() throws {
        let m = try load("tiny.safetensors")
        m.fc.setTrainable(true)
        #expect(m.trainableParameters.count == 2)
        let h = m.norm(m.embed(try io("ids")))
        m.fc(h).square().sum().backward()
        #expect(m.fc.weight.grad != nil)
        #expect(m.norm.weight!.grad == nil)
        m.setTrainable(false)
        #expect(m.trainableParameters.isEmpty)
    }

    @Test func saveAndReloadUnderTheSameNames() throws {
        let m = try load("tiny.bin")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nn-save-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("tiny.safetensors")
        try m.save(to: url, metadata: ["format": "pt"])
        let reloaded = try VarBuilder(try Weights.open(url)).build(Tiny.init)
        for ((n1, t1), (n2, t2)) in zip(m.namedParameters, reloaded.namedParameters) {
            #expect(n1 == n2)
            #expect(maxDifference(t1, t2) == 0)
        }
        // load(_:) copies in place into an existing model, strictly.
        let fresh = Tiny(VarBuilder(initializingWith: Generator(seed: 1)))
        try fresh.load(try Weights.open(url))
        #expect(maxDifference(fresh.fc.weight, m.fc.weight) == 0)
        #expect(throws: WeightLoadingError.self) { try fresh.fc.load(try Weights.open(url)) }
    }

    @Test func freshInitializationFollowsPyTorchBounds() {
        let vb = VarBuilder(initializingWith: Generator(seed: 3))
        let linear = Linear(vb.pp("l"), inFeatures: 64, outFeatures: 32)
        let bound = 1 / 8.0
        #expect(linear.weight.abs().max().item() <= bound)
        #expect(linear.weight.abs().max().item() > bound * 0.9)
        let norm = LayerNorm(vb.pp("n"), size: 5)
        #expect(norm.weight!.toArray(Float.self) == [1, 1, 1, 1, 1])
        #expect(norm.bias!.toArray(Float.self) == [0, 0, 0, 0, 0])
    }

    @Test func openingBadPathsNamesThem() {
        #expect(throws: WeightLoadingError.noSuchFile("/nonexistent/model.safetensors")) {
            try Weights.open(URL(fileURLWithPath: "/nonexistent/model.safetensors"))
        }
        let text = FileManager.default.temporaryDirectory.appendingPathComponent("weights-\(UUID().uuidString).txt")
        _ = FileManager.default.createFile(atPath: text.path, contents: Data("x".utf8))
        defer { try? FileManager.default.removeItem(at: text) }
        #expect(throws: WeightLoadingError.unknownFormat(text.path)) { try Weights.open(text) }
    }
}
