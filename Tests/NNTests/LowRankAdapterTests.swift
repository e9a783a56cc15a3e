import Foundation
import NN
import Testing
import Torch

@Suite struct LowRankAdapterTests {
    func layer() -> Linear {
        Linear(VarBuilder(initializingWith: Generator(seed: 1)).pp("fc"), inFeatures: 6, outFeatures: 5)
    }

    /// A linear layer with an adapter computes (W + alpha/rank · up · down) x + b; a fresh adapter (up = 0) adds
    /// exactly nothing, and the layer's own tensors are what it was built with.
    @Test func adapterAddsItsLowRankUpdate() {
        let fc = layer()
        let x = Tensor.randn([3, 6], generator: Generator(seed: 2))
        let plain = fc(x)
        let adapter = LowRankAdapter(inFeatures: 6, outFeatures: 5, rank: 2, alpha: 3, generator: Generator(seed: 3))
        fc.adapter = adapter
        #expect((fc(x) - plain).abs().max().item() == 0)
        withNoGrad { adapter.up.copy_(Tensor.randn([5, 2], generator: Generator(seed: 4))) }
        let merged = fc.weight + adapter.up.matmul(adapter.down) * 1.5
        let expected = Functional.linear(x, weight: merged, bias: fc.bias)
        #expect(withNoGrad { (fc(x) - expected).abs().max().item() } < 1e-6)
        #expect(withNoGrad { (fc(x) - plain).abs().max().item() } > 1e-2)
        #expect(fc.namedParameters.map(\.name) == ["weight", "bias"])
    }

    /// Dropout acts only while autograd records, and its masks come from the adapter's generator: the same seed gives
    /// the same masks.
    @Test func dropoutDrawsFromItsGeneratorWhileTraining() {
        func output(seed: UInt64, grad: Bool) -> Tensor {
            let adapter = LowRankAdapter(inFeatures: 6, outFeatures: 5, rank: 2, alpha: 2, dropout: 0.5, generator: Generator(seed: 3))
            withNoGrad { adapter.up.copy_(Tensor.ones([5, 2])) }
            adapter.dropoutGenerator = Generator(seed: seed)
            let x = Tensor.ones([4, 6])
            return grad ? adapter(x).detach() : withNoGrad { adapter(x) }
        }
        #expect((output(seed: 1, grad: true) - output(seed: 1, grad: true)).abs().max().item() == 0)
        #expect((output(seed: 1, grad: true) - output(seed: 2, grad: true)).abs().max().item() > 0)
        #expect((output(seed: 1, grad: false) - output(seed: 2, grad: false)).abs().max().item() == 0)
        #expect((output(seed: 1, grad: true) - output(seed: 1, grad: false)).abs().max().item() > 0)
    }
}
