import Foundation
import Testing

@testable import Torch

@Suite struct AutogradTests {
    @Test func backwardAccumulatesAndZeroGradClears() {
        let x = Tensor([1.0, 2.0, 3.0] as [Float]).requiringGrad()
        (x * x).sum().backward()
        #expect(x.grad!.toArray(Float.self) == [2, 4, 6])
        (x * 3).sum().backward()
        #expect(x.grad!.toArray(Float.self) == [5, 7, 9])  // accumulates, as in PyTorch
        x.zeroGrad()
        #expect(x.grad == nil)
    }

    @Test func backwardWithGradientIsAVectorJacobianProduct() {
        let x = Tensor([1.0, -2.0] as [Float]).requiringGrad()
        let y = x * x * x
        y.backward(gradient: Tensor([1.0, 0.5] as [Float]))
        #expect(x.grad!.toArray(Float.self) == [3, 6])
    }

    @Test func autogradGradWithGradOutputsAndUnusedInputs() {
        let a = Tensor([1.0, 2.0] as [Float]).requiringGrad()
        let b = Tensor([3.0] as [Float]).requiringGrad()
        let unused = Tensor([0.0] as [Float]).requiringGrad()
        let out = a * b  // [3, 6]
        let grads = Autograd.grad(outputs: [out], inputs: [a, b, unused], gradOutputs: [Tensor([1.0, 10.0] as [Float])], allowUnused: true)
        #expect(grads[0]!.toArray(Float.self) == [3, 30])
        #expect(grads[1]!.toArray(Float.self) == [21])
        #expect(grads[2] == nil)
        #expect(a.grad == nil)  // autograd.grad does not accumulate into .grad
    }

    /// torch.autograd.backward([y1, y2], [g1, g2]): one pass from two outputs sharing a graph accumulates
    /// g1·dy1/dx + g2·dy2/dx (what SDXL's conditioning, hidden states and pooled embeddings, sends to its encoders).
    @Test func backwardFromSeveralOutputsAtOnce() {
        let x = Tensor([1.0, -2.0] as [Float]).requiringGrad()
        let shared = x * x  // [1, 4]
        let y1 = shared * 3, y2 = shared.sum()
        Autograd.backward([y1, y2], gradients: [Tensor([1.0, 0.5] as [Float]), Tensor(scalar: Float(2))])
        // d/dx: (3·g1 + g2)·2x = [(3 + 2)·2, (1.5 + 2)·(−4)]
        #expect(x.grad!.toArray(Float.self) == [10, -14])
        let z = Tensor([3.0] as [Float]).requiringGrad()
        Autograd.backward([(z * z).sum()], gradients: [nil])  // one element: no gradient needed
        #expect(z.grad!.toArray(Float.self) == [6])
    }

    @Test func secondOrderGradientsWithCreateGraph() {
        let x = Tensor([2.0] as [Float]).requiringGrad()
        let y = x * x * x
        let dy = Autograd.grad(outputs: [y], inputs: [x], createGraph: true)[0]!
        #expect(dy.item() == 12)
        let d2y = Autograd.grad(outputs: [dy], inputs: [x])[0]!
        #expect(d2y.item() == 12)  // 6x
    }

    @Test func noGradScopeRestoresState() throws {
        #expect(Autograd.isGradEnabled)
        let x = Tensor([1.0] as [Float]).requiringGrad()
        let y = withNoGrad { x * 2 }
        #expect(!y.requiresGrad)
        #expect(Autograd.isGradEnabled)
        struct Boom: Error {}
        #expect(throws: Boom.self) { try withNoGrad { throw Boom() } }
        #expect(Autograd.isGradEnabled)  // restored after a throw too
        withNoGrad {
            withGradEnabled(true) { #expect(Autograd.isGradEnabled) }
            #expect(!Autograd.isGradEnabled)
        }
        #expect(Autograd.isGradEnabled)
    }

    @Test func autocastRunsMatmulInBFloat16AndRestores() {
        let a = Tensor.randn([4, 4], generator: Generator(seed: 1))
        #expect(!Autograd.isAutocastEnabled())
        let inside = withAutocast(dtype: .bfloat16) {
            #expect(Autograd.isAutocastEnabled())
            let nested = withAutocast(enabled: false) { a.matmul(a).dtype }
            #expect(nested == .float32)
            #expect(Autograd.isAutocastEnabled())
            return a.matmul(a).dtype
        }
        #expect(inside == .bfloat16)
        #expect(!Autograd.isAutocastEnabled())
        #expect(a.matmul(a).dtype == .float32)
    }

    @Test func gradientFlowsThroughAutocastBackToFloat32Leaves() {
        let w = Tensor.randn([3, 3], generator: Generator(seed: 2)).requiringGrad()
        let loss = withAutocast(dtype: .bfloat16) { w.matmul(w).sum() }
        loss.backward()
        #expect(w.grad!.dtype == .float32)
    }
}
