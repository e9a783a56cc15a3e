import Foundation
import NN
import Testing
import Torch

/// `nn.MultiheadAttention`'s packed layout (open_clip) against the same attention with three projections.
@Suite struct PackedAttentionTests {
    /// A random attention with separate projections, and its tensors in the packed layout.
    func pair() throws -> (separate: MultiHeadAttention, packed: MultiHeadAttention) {
        let separate = MultiHeadAttention(VarBuilder(initializingWith: Generator(seed: 3)), dimension: 8, heads: 2)
        let s = separate.stateDict()
        let packed: [String: Tensor] = [
            "in_proj_weight": Tensor.cat([s["q_proj.weight"]!, s["k_proj.weight"]!, s["v_proj.weight"]!], dim: 0),
            "in_proj_bias": Tensor.cat([s["q_proj.bias"]!, s["k_proj.bias"]!, s["v_proj.bias"]!], dim: 0),
            "out_proj.weight": s["out_proj.weight"]!, "out_proj.bias": s["out_proj.bias"]!,
        ]
        let loaded = try VarBuilder(TensorDictionary(packed)).build { MultiHeadAttention(packed: $0, dimension: 8, heads: 2) }
        return (separate, loaded)
    }

    @Test func packedEqualsSeparate() throws {
        let (separate, packed) = try pair()
        let x = Tensor.randn([2, 5, 8], generator: Generator(seed: 4))
        let context = Tensor.randn([2, 3, 8], generator: Generator(seed: 5))
        #expect(maxDifference(packed(x), separate(x)) < 1e-6)
        #expect(maxDifference(packed(x, isCausal: true), separate(x, isCausal: true)) < 1e-6)
        #expect(maxDifference(packed(x, context: context), separate(x, context: context)) < 1e-6)
        #expect(packed.namedParameters.map(\.name) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"])
    }

    @Test func gradientsReachThePackedProjection() throws {
        let (_, packed) = try pair()
        packed.setTrainable(true)
        packed(Tensor.randn([1, 4, 8], generator: Generator(seed: 6)), isCausal: true).square().sum().backward()
        #expect(packed.trainableParameters.count == 4)
        #expect(packed.trainableParameters.allSatisfy { $0.grad != nil && $0.grad!.abs().sum().item() > 0 })
    }

    /// Keys saved from inside DistributedDataParallel (`module.` in front) load under the unwrapped names; a wrong
    /// shape is reported under the key the file has.
    @Test func wrapperPrefixIsAnAlias() throws {
        let (_, packed) = try pair()
        let wrapped = Dictionary(uniqueKeysWithValues: packed.stateDict(prefix: "attn").map { ("module.\($0.key)", $0.value) })
        let loaded = try VarBuilder(TensorDictionary(wrapped)).allowingWrapper("module").build {
            MultiHeadAttention(packed: $0.pp("attn"), dimension: 8, heads: 2)
        }
        #expect(loaded.namedParameters.map(\.name) == packed.namedParameters.map(\.name))
        #expect(loaded.stateDict(prefix: "attn").keys.sorted() == packed.stateDict(prefix: "attn").keys.sorted())
        let x = Tensor.randn([1, 3, 8], generator: Generator(seed: 9))
        #expect(maxDifference(loaded(x), packed(x)) == 0)
        do {
            _ = try VarBuilder(TensorDictionary(wrapped, origin: "ddp.pt")).allowingWrapper("module").build {
                MultiHeadAttention(packed: $0.pp("attn"), dimension: 4, heads: 2)
            }
            Issue.record("loaded an 8-wide attention as a 4-wide one")
        } catch {
            #expect("\(error)".hasPrefix(
                "ddp.pt does not fit the model: 'module.attn.in_proj_weight' has shape [24, 8] in the checkpoint, the model expects [12, 4]"))
        }
        // Both names at once: the unwrapped one is used and the other is reported unused.
        var both = wrapped
        for (key, value) in packed.stateDict(prefix: "attn") { both[key] = value }
        #expect(throws: WeightLoadingError.self) {
            try VarBuilder(TensorDictionary(both)).allowingWrapper("module").build {
                MultiHeadAttention(packed: $0.pp("attn"), dimension: 8, heads: 2)
            }
        }
    }
}
