import Foundation
import Synchronization

/// Analytic FLOP counts of the products that dominate diffusion models (linear, conv2d, scaled dot-product attention,
/// matmul): 2 per multiply-add, from the shapes of each call while counting is on. Normalisations, activations and
/// the scheduler are left out (a few percent at Stable Diffusion's sizes), as FLOP counts for MFU usually do.
///
/// The backward pass is estimated from the forward calls made with gradients on: a product's gradient with respect
/// to one operand costs one more product of the same size, so each operand that requires a gradient adds the
/// forward count again (a frozen layer on the gradient's path costs 1×, a trained one 2×).
public enum FLOPCounter {
    public struct Count: Sendable, Equatable {
        public var forward = 0.0
        public var backward = 0.0
        public var total: Double { forward + backward }
        public init(forward: Double = 0, backward: Double = 0) {
            self.forward = forward
            self.backward = backward
        }
    }

    private final class State: @unchecked Sendable {
        let lock = NSLock()
        var count = Count()
    }

    private static let state = State()
    /// How many `counting` calls are running: read on every product, so an atomic rather than the lock.
    private static let depth = Atomic<Int>(0)

    /// Runs `body` and returns what it computed with the FLOPs of its products (nested counts each see their own
    /// and add to the outer one).
    public static func counting<R>(_ body: () throws -> R) rethrows -> (R, Count) {
        state.lock.lock()
        let outer = state.count
        state.count = Count()
        state.lock.unlock()
        depth.add(1, ordering: .sequentiallyConsistent)
        defer {
            depth.subtract(1, ordering: .sequentiallyConsistent)
            state.lock.lock()
            state.count = Count(forward: outer.forward + state.count.forward, backward: outer.backward + state.count.backward)
            state.lock.unlock()
        }
        let result = try body()
        state.lock.lock()
        let counted = state.count
        state.lock.unlock()
        return (result, counted)
    }

    static var isCounting: Bool { depth.load(ordering: .relaxed) > 0 }

    /// A product of `flops` forward FLOPs whose gradient is wanted for `operandsNeedingGrad` of its operands.
    static func record(_ flops: Double, operandsNeedingGrad: Int) {
        state.lock.lock()
        state.count.forward += flops
        state.count.backward += flops * Double(operandsNeedingGrad)
        state.lock.unlock()
    }

    /// Records a product when counting; nothing is computed, not even the operand list, when not.
    static func record(_ flops: @autoclosure () -> Double, operands: @autoclosure () -> [Tensor?]) {
        guard isCounting else { return }
        let needing = Autograd.isGradEnabled ? operands().reduce(0) { $0 + (($1?.requiresGrad ?? false) ? 1 : 0) } : 0
        record(flops(), operandsNeedingGrad: needing)
    }
}
