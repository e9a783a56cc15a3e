import Foundation
import Testing

@testable import Torch

/// Uses the process-wide default generator, so these run one at a time.
@Suite(.serialized) struct RandomAndOptimizerTests {
    let fixture: Fixture
    init() throws { fixture = try Fixture("engine/ops.safetensors") }

    @Test func manualSeedThenRandnEqualsPython() throws {
        Torch.manualSeed(42)
        expectClose(Tensor.randn([2, 3, 8, 8]), try fixture.tensor("random.manual_seed42.randn_2x3x8x8"), atol: 0, rtol: 0, "randn after manual_seed(42)")
        expectClose(Tensor.randn([5]), try fixture.tensor("random.manual_seed42.then_randn_5"), atol: 0, rtol: 0, "second randn")
        expectClose(Tensor.rand([7]), try fixture.tensor("random.manual_seed42.then_rand_7"), atol: 0, rtol: 0, "then rand")
    }

    @Test func seededGeneratorEqualsPython() throws {
        let generator = Generator(seed: 7)
        expectClose(Tensor.randn([1, 4, 8, 8], generator: generator), try fixture.tensor("random.generator7.randn_1x4x8x8"), atol: 0, rtol: 0, "randn")
        #expect(Tensor.randint(0, 10, [12], generator: generator).toArray(Int64.self)
            == (try fixture.tensor("random.generator7.then_randint_0_10_12")).toArray(Int64.self))
        #expect(Tensor.randperm(9, generator: generator).toArray(Int64.self)
            == (try fixture.tensor("random.generator7.then_randperm_9")).toArray(Int64.self))
    }

    @Test func dropoutDrawsFromTheSeededDefaultGenerator() throws {
        Torch.manualSeed(3)
        let out = Functional.dropout(Tensor.ones([4, 8]), p: 0.5, training: true)
        expectClose(out, try fixture.tensor("random.manual_seed3.dropout_half"), atol: 0, rtol: 0, "dropout mask")
    }

    @Test func generatorStateRestoresTheStream() throws {
        let generator = Generator(seed: 11)
        _ = Tensor.randn([3], generator: generator)
        let saved = generator.state
        let first = Tensor.randn([2, 5], generator: generator).toArray(Float.self)
        _ = Tensor.randn([100], generator: generator)
        try generator.restore(state: saved)
        #expect(Tensor.randn([2, 5], generator: generator).toArray(Float.self) == first)
        #expect(generator.seed == 11)
        // A state of the wrong size is refused with libtorch's message, not taken.
        #expect(throws: TorchError.self) { try generator.restore(state: Tensor.zeros([3], dtype: .uint8)) }
    }

    @Test func adamWMatchesPyTorchOverTenSteps() throws {
        let p1 = try fixture.tensor("adamw.p1.initial").requiringGrad()
        let p2 = try fixture.tensor("adamw.p2.initial").requiringGrad()
        let optimizer = AdamW(parameters: [p1, p2], learningRate: 1e-2, betas: (0.9, 0.99), eps: 1e-8, weightDecay: 0.1)
        for step in 0..<10 {
            p1.grad = try fixture.tensor("adamw.grad1.\(step)")
            p2.grad = fixture.has("adamw.grad2.\(step)") ? try fixture.tensor("adamw.grad2.\(step)") : nil
            optimizer.step()
            if step == 0 { expectClose(p1.detach(), try fixture.tensor("adamw.p1.after1"), atol: 1e-6, rtol: 0, "p1 after one step") }
        }
        expectClose(p1.detach(), try fixture.tensor("adamw.p1.after10"), atol: 1e-6, rtol: 0, "p1 after ten steps")
        expectClose(p2.detach(), try fixture.tensor("adamw.p2.after10"), atol: 1e-6, rtol: 0, "p2 after ten steps")
        let (state, metadata) = optimizer.state()
        expectClose(state["exp_avg_sq.0"]!, try fixture.tensor("adamw.exp_avg_sq.0.after10"), atol: 1e-7, rtol: 1e-5, "second moment")
        #expect(metadata["step"] == "10")
    }

    @Test func adamWStateRoundTripResumesExactly() throws {
        let generator = Generator(seed: 5)
        func run(_ steps: Range<Int>, _ optimizer: AdamW, _ p: Tensor) {
            for step in steps {
                p.grad = Tensor.randn([6], generator: Generator(seed: UInt64(100 + step)))
                optimizer.step()
            }
        }
        let start = Tensor.randn([6], generator: generator)
        let straight = start.clone().requiringGrad()
        let a = AdamW(parameters: [straight], learningRate: 0.05)
        run(0..<6, a, straight)

        let resumed = start.clone().requiringGrad()
        let b = AdamW(parameters: [resumed], learningRate: 0.05)
        run(0..<3, b, resumed)
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("adamw-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: file) }
        try b.save(to: file)
        let c = AdamW(parameters: [resumed], learningRate: 123)  // hyper-parameters come back from the state
        try c.load(from: file)
        #expect(c.learningRate == 0.05)
        run(3..<6, c, resumed)
        #expect(resumed.toArray(Float.self) == straight.toArray(Float.self))
        let (tensors, _) = b.state()
        #expect(throws: TorchError(op: "AdamW.load", message: "the state is not an AdamW state (optimizer = SGD)")) {
            try c.load(state: tensors, metadata: ["optimizer": "SGD"])
        }
        let other = AdamW(parameters: [resumed, resumed])
        #expect(throws: TorchError(op: "AdamW.load", message: "the state is for 1 parameters, the optimizer has 2")) {
            try other.load(from: file)
        }
    }
}
