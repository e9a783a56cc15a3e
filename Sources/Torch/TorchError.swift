import CTorch
import Foundation

/// A failure reported by libtorch (or by a check of ours in front of it), with the op that failed.
public struct TorchError: Error, CustomStringConvertible, Equatable, Sendable {
    public let op: String
    public let message: String

    public init(op: String, message: String) {
        self.op = op
        self.message = message
    }

    public var description: String { "torch.\(op): \(message)" }

    /// The message the shim stored for the last failed call on this thread.
    static func last(_ op: String) -> TorchError {
        let message = ct_last_error().map { String(cString: $0) } ?? "failed without a message"
        return TorchError(op: op, message: message)
    }
}

extension Torch {
    /// Runs `body`, turning every libtorch failure inside it into a thrown `TorchError` (the first one) instead of
    /// stopping the program. Meant for straight-line tensor code on inputs that come from outside (a file, a user):
    /// after a failure, the ops that follow get placeholder tensors, and their results are thrown away.
    public static func catching<R>(_ body: () throws -> R) throws -> R {
        let scope = ErrorScope.current
        scope.depth += 1
        defer { scope.depth -= 1 }
        let result = try body()
        if let error = scope.firstError {
            scope.firstError = nil  // reported once: an enclosing scope whose code catches it goes on
            throw error
        }
        return result
    }
}

/// Per-thread state of `Torch.catching` scopes. Thread-local because libtorch's errors are thread-local too.
final class ErrorScope {
    var depth = 0
    var firstError: TorchError?

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key) { pointer in
            guard let pointer else { return }
            Unmanaged<ErrorScope>.fromOpaque(pointer).release()
        }
        return key
    }()

    static var current: ErrorScope {
        if let pointer = pthread_getspecific(key) {
            return Unmanaged<ErrorScope>.fromOpaque(pointer).takeUnretainedValue()
        }
        let scope = ErrorScope()
        pthread_setspecific(key, Unmanaged.passRetained(scope).toOpaque())
        return scope
    }
}

/// Wraps a handle returned by the shim, or handles its failure (trap, or record inside `Torch.catching`).
@inline(__always)
func check(_ handle: ct_tensor?, _ op: StaticString) -> ct_tensor {
    if let handle { return handle }
    return failed(op)
}

@inline(never)
func failed(_ op: StaticString) -> ct_tensor {
    let error = TorchError.last("\(op)")
    let scope = ErrorScope.current
    guard scope.depth > 0 else { fatalError(error.description) }
    if scope.firstError == nil { scope.firstError = error }
    var zero: Int64 = 0
    return ct_empty(&zero, 1, DType.float32.rawValue, Int32(CT_CPU), 0)!
}

@inline(__always)
func checkStatus(_ status: Int32, _ op: StaticString) {
    if status < 0 { failedStatus(op) }
}

@inline(never)
func failedStatus(_ op: StaticString) {
    let error = TorchError.last("\(op)")
    let scope = ErrorScope.current
    guard scope.depth > 0 else { fatalError(error.description) }
    if scope.firstError == nil { scope.firstError = error }
}

func trap(_ op: String, message: String) -> Never {
    fatalError(TorchError(op: op, message: message).description)
}
