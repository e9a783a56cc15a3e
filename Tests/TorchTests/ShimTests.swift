import Foundation
import Testing

@testable import Torch
import CTorch

@Suite struct ShimTests {
    /// The shim catches libtorch's exceptions and keeps their message for the thread; `TorchError.last` reads it (the
    /// Swift layer traps with it, or throws it where the input comes from outside).
    @Test func libtorchErrorsComeBackWithTheirMessage() {
        let a = Tensor.zeros([2, 3]), b = Tensor.zeros([4, 5]), c = Tensor.zeros([3, 4])
        #expect(ct_matmul(a.handle, b.handle) == nil)
        let error = TorchError.last("matmul")
        #expect(error.op == "matmul")
        #expect(error.message.contains("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), "\(error.message)")
        // A status failure too, and a call that succeeds clears the message.
        let nonLeaf = Tensor.ones([2]).requiringGrad() * 2
        #expect(ct_set_requires_grad(nonLeaf.handle, 0) < 0)
        #expect(TorchError.last("set_requires_grad").message.contains("leaf variables"))
        let product = ct_matmul(a.handle, c.handle)
        #expect(product != nil)
        #expect(ct_last_error() == nil)
        product.map(ct_free)
    }

    @Test func bytesRoundTripAndShapeChecks() throws {
        let values: [Float] = [1, -2, 3.5, 4, 0, 6]
        let t = Tensor(values, shape: [2, 3])
        #expect(t.shape == [2, 3])
        #expect(t.dtype == .float32)
        #expect(t.strides == [3, 1])
        #expect(t.toArray(Float.self) == values)
        #expect(t.toArray(Double.self) == values.map(Double.init))
        let bytes = t.bytes()
        #expect(bytes.count == 24)
        let back = try bytes.withUnsafeBytes { try Tensor(bytes: $0, shape: [3, 2], dtype: .float32) }
        #expect(back.toArray(Float.self) == values)
        #expect(throws: TorchError(op: "from_data", message: "24 bytes do not fill shape [5] of float32 (20 bytes)")) {
            try bytes.withUnsafeBytes { try Tensor(bytes: $0, shape: [5], dtype: .float32) }
        }
        #expect(Tensor(scalar: Int64(7)).item() == 7)
        #expect(Tensor([true, false, true]).sum().item() == 2)
    }

    @Test func integerTensorsStayIntegralUnderIntegralScalars() {
        let i = Tensor([Int64(1), 2, 3])
        #expect((i * 2).dtype == .int64)
        #expect((i * 2.5).dtype == .float32)
    }

    @Test func handlesAreFreedSoMemoryStaysFlat() {
        func churn(_ count: Int) {
            for _ in 0..<count {
                let t = Tensor.zeros([1024])  // 4 KiB; with its two results, 100k leaked would be over 1 GiB
                _ = (t + 1).sum()
            }
        }
        churn(10_000)  // warm up allocator caches
        let handlesBefore = ct_thread_live_handles()
        let before = residentBytes()
        #expect(before > 10 << 20, "could not read the resident size (\(before) bytes)")
        churn(100_000)
        #expect(ct_thread_live_handles() == handlesBefore, "handles made on this thread were not all freed")
        // Other suites run in parallel and move the resident size a little; a leak would move it by > 1 GiB.
        let grown = residentBytes() - before
        #expect(grown < 200 << 20, "resident memory grew by \(grown >> 20) MiB over 100k allocations")
    }

    @Test func runtimeReportsPinnedVersion() {
        #expect(Torch.compiledVersion == Torch.pinnedVersion)
        #expect(Torch.runtimeVersion == Torch.pinnedVersion)
        #expect(Torch.threadCount >= 1)
        #expect(Torch.libraryDirectory != nil)
    }

    @Test func cudaIsAClearErrorOnACPUOnlyLibtorch() throws {
        guard !Torch.isCUDAAvailable else { return }  // on a CUDA machine there is nothing to refuse
        #expect(throws: TorchError.self) { try Device.cuda(0).ensureAvailable() }
        #expect(Device("cuda:1") == .cuda(1))
        #expect(Device("gpu") == nil)
        // The allocator's statistics: an error naming the reason, not a crash.
        #expect(throws: TorchError.self) { try Torch.cudaMemory(.cuda(0)) }
        #expect(throws: TorchError.self) { try Torch.cudaMemory(.cpu) }
        #expect(Device("meta") == .meta && Tensor.zeros([2, 3], device: .meta).device == .meta)
    }

    /// Shape queries on the meta path used to run outside the shim's guard: a weight or query of too few
    /// dimensions threw past it and terminated the process. Now they are errors like any other.
    @Test func metaShapeQueriesAreGuarded() {
        let flat = Tensor.zeros([4], device: .meta), indices = Tensor.zeros([2], dtype: .int64, device: .meta)
        #expect(ct_embedding(flat.handle, indices.handle) == nil)
        #expect(TorchError.last("embedding").message == "embedding: weight must have 2 dimensions, got 1")
        let scalar = Tensor.zeros([], device: .meta), matrix = Tensor.zeros([3, 4], device: .meta)
        #expect(ct_scaled_dot_product_attention(matrix.handle, matrix.handle, scalar.handle, nil, 0, 0, -1) == nil)
        #expect(
            TorchError.last("sdpa").message
                == "scaled_dot_product_attention: query and value need at least 2 dimensions, got 2 and 0")
        #expect(ct_scaled_dot_product_attention(flat.handle, matrix.handle, matrix.handle, nil, 0, 0, -1) == nil)
        #expect(ct_last_error() != nil)
        // The same calls with good shapes still give their meta results.
        let weight = Tensor.zeros([10, 6], device: .meta)
        let embedded = ct_embedding(weight.handle, indices.handle)
        #expect(embedded.map { Tensor(handle: $0).shape } == [2, 6])
    }

    /// A call that makes several handles makes all of them or none: when a later wrap fails (out of memory,
    /// injected here), the handles made before it are freed and none is handed out.
    @Test func failedMultiOutputCallsLeakNoHandle() throws {
        let t = Tensor(Array((0..<12).map(Float.init)), shape: [3, 4])
        let before = ct_thread_live_handles()

        var values: ct_tensor?, indices: ct_tensor?
        ct_debug_fail_wraps_after(1)
        #expect(ct_max_dim(t.handle, 1, 0, 0, &values, &indices) == -1)
        #expect(TorchError.last("max").message == "std::bad_alloc")
        #expect(values == nil && indices == nil)
        #expect(ct_thread_live_handles() == before)

        var parts = [ct_tensor?](repeating: nil, count: 3)
        ct_debug_fail_wraps_after(2)
        #expect(ct_chunk(t.handle, 3, 0, &parts, 3) == -1)
        #expect(parts.allSatisfy { $0 == nil })
        #expect(ct_thread_live_handles() == before)

        let x = Tensor.ones([2]).requiringGrad(), y = Tensor.ones([2]).requiringGrad()
        let loss = (x * y * 3).sum()
        let afterInputs = ct_thread_live_handles()
        var grads = [ct_tensor?](repeating: nil, count: 2)
        ct_debug_fail_wraps_after(1)
        let outputs: [ct_tensor?] = [loss.handle], inputs: [ct_tensor?] = [x.handle, y.handle]
        #expect(ct_autograd_grad(outputs, 1, inputs, 2, nil, 1, 0, 0, &grads) == -1)
        #expect(grads.allSatisfy { $0 == nil })
        #expect(ct_thread_live_handles() == afterInputs)

        // One failure per request: the next call succeeds and hands out both results.
        let (maxValues, maxIndices) = t.max(dim: 1)
        #expect(maxValues.toArray(Float.self) == [3, 7, 11] && maxIndices.toArray(Int64.self) == [3, 3, 3])
    }
}
