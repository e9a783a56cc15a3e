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
}
