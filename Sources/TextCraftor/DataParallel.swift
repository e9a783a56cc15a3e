import Foundation
import NN
import Torch

/// How this process takes part in data-parallel training (torchrun's model: one process per rank, the same
/// program, the same seed).
///
/// Every rank draws the same global batch of prompts and the same global latent noise, and keeps its own rows:
/// rank r of W takes rows r·B/W ..< (r+1)·B/W. Its noise is thus a stream of its own, fixed by the seed and its rank,
/// and each sample's noise does not depend on W, so W ranks step exactly as one process with the whole batch, and a
/// run resumes with any world size. Gradients (and the logged loss and rewards) are averaged with an all-reduce
/// before the AdamW step, which every rank then takes alike; a hash of the parameters is compared across ranks every
/// `syncCheckEvery` steps.
public struct DataParallel {
    public let group: ProcessGroup
    public var syncCheckEvery: Int

    public var rank: Int { group.rank }
    public var worldSize: Int { group.worldSize }

    public init(group: ProcessGroup, syncCheckEvery: Int = 100) {
        precondition(syncCheckEvery >= 1)
        self.group = group
        self.syncCheckEvery = syncCheckEvery
    }

    /// This rank's rows of a global batch of `batchSize` (a multiple of the world size).
    public func shard(_ batchSize: Int) -> Range<Int> {
        precondition(batchSize % worldSize == 0, "the batch must split evenly across ranks")
        let size = batchSize / worldSize
        return rank * size..<(rank + 1) * size
    }

    static func key(_ rank: Int) -> String { "textcraftor/step/\(rank)" }

    /// Records in the store that this rank reached `step` (read back to name a rank that stopped).
    func arrive(at step: Int) throws {
        try group.set(Self.key(rank), String(step))
    }

    /// Where a collective's tensors must be: on the GPU of the parameters for NCCL, on the CPU for Gloo (a CUDA
    /// tensor goes through host memory).
    func staged(_ tensor: Tensor, like parameter: Tensor?) -> Tensor {
        let device = group.backend.onCUDA ? (parameter?.device ?? .cpu) : .cpu
        return tensor.device == device ? tensor : tensor.to(device)
    }

    /// Averages the gradients of `parameters` and the values in `scalars` across the ranks, in one collective.
    /// A parameter without a gradient counts as zeros.
    func average(gradientsOf parameters: [Tensor], scalars: [Double], step: Int) throws -> [Double] {
        try arrive(at: step)
        let gradients = parameters.map { parameter -> Tensor in
            if let grad = parameter.grad { return grad }
            let zeros = parameter.zerosLike()
            parameter.grad = zeros
            return parameter.grad!
        }
        // One flat buffer per dtype, as DDP's buckets: c10d reduces a list of tensors as replicas of one, so the
        // gradients travel concatenated and are copied back.
        let values = staged(Tensor(scalars, shape: [scalars.count]), like: parameters.first)
        let byType = Dictionary(grouping: gradients.indices, by: { gradients[$0].dtype })
        let buffers = withNoGrad {
            byType.values.map { indices in
                staged(Tensor.cat(indices.map { gradients[$0].flatten() }, dim: 0), like: parameters.first)
            }
        }
        try collective(step: step) {
            for buffer in buffers { try group.allReduce([buffer], .sum) }
            try group.allReduce([values], .sum)
        }
        let scale = 1 / Double(worldSize)
        withNoGrad {
            for (indices, buffer) in zip(byType.values, buffers) {
                var offset = 0
                for i in indices {
                    let count = gradients[i].elementCount
                    gradients[i].copy_((buffer.narrow(dim: 0, start: offset, length: count) * scale).view(gradients[i].shape))
                    offset += count
                }
            }
        }
        return values.toArray(Double.self).map { $0 * scale }
    }

    /// Throws if the ranks' parameters differ (by a 64-bit FNV-1a hash of their bytes).
    func checkInSync(_ parameters: [Tensor], step: Int) throws {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for parameter in parameters {
            for byte in parameter.detach().contiguous().bytes() {
                hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
            }
        }
        let signed = Int64(bitPattern: hash)
        let high = staged(Tensor([signed], shape: [1]), like: parameters.first)
        let low = staged(Tensor([signed], shape: [1]), like: parameters.first)
        try collective(step: step) {
            try group.allReduce([high], .max)
            try group.allReduce([low], .min)
        }
        guard high.toArray(Int64.self) == low.toArray(Int64.self) else {
            throw TextCraftorError.distributed("the ranks' parameters differ after step \(step) (hash check): the run is no longer data-parallel")
        }
    }

    /// Runs a collective; if it fails (a peer died, or hung past the timeout), the error names the ranks that did not
    /// reach `step`, from the store's records.
    func collective(step: Int, _ body: () throws -> Void) throws {
        do { try body() } catch {
            throw TextCraftorError.distributed(diagnose(step: step, error: error))
        }
    }

    /// Names the ranks that stopped. A rank can die just after recording its arrival at the step, so arrival alone
    /// cannot tell: every rank whose collective failed answers a roll call in the store, and the ranks that do not
    /// answer within a grace period (dead or frozen) are the ones named, with the last step each reached.
    func diagnose(step: Int, error: Error, grace: Double = 3) -> String {
        let cause = (error as? TorchError)?.message.split(separator: "\n").first.map(String.init) ?? "\(error)"
        let unreachable = "rank \(rank): the store on rank 0 cannot be reached at step \(step): rank 0 stopped (\(cause))"
        func rollCall(_ rank: Int) -> String { "textcraftor/alive/\(step)/\(rank)" }
        var silent = Set(0..<worldSize).subtracting([rank])
        do {
            try group.set(rollCall(rank), "1")
            let deadline = Date().addingTimeInterval(min(grace, group.timeout))
            while !silent.isEmpty {
                for other in silent where try group.value(rollCall(other)) != nil { silent.remove(other) }
                if silent.isEmpty || Date() >= deadline { break }
                usleep(50_000)
            }
        } catch {
            return unreachable
        }
        var named: [String] = []
        for other in silent.sorted() {
            let value: String?
            do { value = try group.value(Self.key(other)) } catch { return unreachable }
            named.append("rank \(other) (last at step \(value.flatMap { Int($0) } ?? 0))")
        }
        let who = named.isEmpty ? "a peer" : named.joined(separator: ", ")
        return "rank \(rank): \(who) stopped responding at step \(step), within the \(Int(group.timeout)) s timeout (\(cause))"
    }
}
