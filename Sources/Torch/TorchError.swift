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

/// Wraps a handle returned by the shim; a failure stops the program with the op's name and libtorch's message.
@inline(__always)
func check(_ handle: ct_tensor?, _ op: StaticString) -> ct_tensor {
    if let handle { return handle }
    failed(op)
}

@inline(never)
func failed(_ op: StaticString) -> Never {
    fatalError(TorchError.last("\(op)").description)
}

@inline(__always)
func checkStatus(_ status: Int32, _ op: StaticString) {
    if status < 0 { failed(op) }
}

func trap(_ op: String, message: String) -> Never {
    fatalError(TorchError(op: op, message: message).description)
}
