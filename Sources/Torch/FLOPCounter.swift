import Foundation

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

    /// The count of one `counting` call, owned by the thread that runs it: ops are issued from the caller's thread
    /// (libtorch's own worker threads never call back here), so concurrent work elsewhere in the process (other tests,
    /// other requests) is never counted in.
    private final class Counter {
        var count = Count()
    }

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    private static var current: Counter? {
        pthread_getspecific(key).map { Unmanaged<Counter>.fromOpaque($0).takeUnretainedValue() }
    }

    /// Runs `body` and returns what it computed with the FLOPs of its products on this thread (a nested count sees
    /// its own, which the outer one includes).
    public static func counting<R>(_ body: () throws -> R) rethrows -> (R, Count) {
        let counter = Counter()
        let outer = pthread_getspecific(key)
        pthread_setspecific(key, Unmanaged.passUnretained(counter).toOpaque())
        defer {
            pthread_setspecific(key, outer)
            if let outer {
                let enclosing = Unmanaged<Counter>.fromOpaque(outer).takeUnretainedValue()
                enclosing.count.forward += counter.count.forward
                enclosing.count.backward += counter.count.backward
            }
        }
        let result = try withExtendedLifetime(counter) { try body() }
        return (result, counter.count)
    }

    /// Records a product when this thread is counting; nothing is computed, not even the operand list, when not.
    static func record(_ flops: @autoclosure () -> Double, operands: @autoclosure () -> [Tensor?]) {
        guard let counter = current else { return }
        let needing = Autograd.isGradEnabled ? operands().reduce(0) { $0 + (($1?.requiresGrad ?? false) ? 1 : 0) } : 0
        let forward = flops()
        counter.count.forward += forward
        counter.count.backward += forward * Double(needing)
    }
}
