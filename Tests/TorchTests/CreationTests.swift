import Foundation
import Testing

@testable import Torch

@Suite struct CreationTests {
    @Test func factoriesFillAsPyTorchDoes() {
        #expect(Tensor.arange(5).toArray(Int64.self) == [0, 1, 2, 3, 4])
        #expect(Tensor.arange(1, 2, step: 0.25, dtype: .float32).toArray(Float.self) == [1, 1.25, 1.5, 1.75])
        #expect(Tensor.linspace(0, 1, count: 5).toArray(Float.self) == [0, 0.25, 0.5, 0.75, 1])
        let full = Tensor.full([2, 3], 7.5, dtype: .float16)
        #expect(full.dtype == .float16)
        #expect(full.shape == [2, 3])
        #expect(full.toArray(Float.self) == Array(repeating: 7.5, count: 6))
        #expect(Tensor.zeros([4], dtype: .int32).toArray(Int32.self) == [0, 0, 0, 0])
        #expect(Tensor.ones([2, 2], dtype: .bool).toArray(Bool.self) == [true, true, true, true])
        #expect(Tensor.empty([3, 0]).elementCount == 0)
        let u = Tensor.rand([1000], generator: Generator(seed: 9))
        #expect(u.min().item() >= 0 && u.max().item() < 1)
        let r = Tensor.randint(3, 6, [200], generator: Generator(seed: 9)).toArray(Int64.self)
        #expect(Set(r) == [3, 4, 5])
    }

    @Test func cloneCopiesDetachShares() {
        let a = Tensor([1.0, 2.0] as [Float])
        let cloned = a.clone(), detached = a.detach(), alias = a.alias()
        a += 10
        #expect(cloned.toArray(Float.self) == [1, 2])  // own storage
        #expect(detached.toArray(Float.self) == [11, 12])  // shares storage, as in PyTorch
        #expect(alias.toArray(Float.self) == [11, 12])
        cloned.copy_(Tensor([5.0, 6.0] as [Float]))
        #expect(cloned.toArray(Float.self) == [5, 6])
        cloned.fill_(3)
        #expect(cloned.toArray(Float.self) == [3, 3])
        cloned.zero_()
        #expect(cloned.sum().item() == 0)
    }

    @Test func transposedViewsCopyOutInRowMajorOrder() {
        let m = Tensor([1, 2, 3, 4, 5, 6] as [Float], shape: [2, 3])
        let t = m.T
        #expect(!t.isContiguous)
        #expect(t.shape == [3, 2])
        #expect(t.toArray(Float.self) == [1, 4, 2, 5, 3, 6])
        #expect(t.contiguous().isContiguous)
        #expect(m.min(dim: 1).values.toArray(Float.self) == [1, 4])
        #expect(m.argmin(dim: 0).toArray(Int64.self) == [0, 0, 0])
    }

    @Test func dtypeNamesParse() {
        #expect(DType(name: "bf16") == .bfloat16)
        #expect(DType(name: "half") == .float16)
        #expect(DType(name: "float32") == .float32)
        #expect(DType(name: "complex64") == nil)
        #expect(DType.allCases.map(\.itemSize) == [4, 2, 2, 8, 4, 1, 1, 8, 1, 2])
    }
}
