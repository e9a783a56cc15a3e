/// Element types. Raw values are the codes of the C shim (`ct_dtype` in ctorch.h), not ATen's ScalarType numbers,
/// so the Swift side never depends on ATen's enum layout.
public enum DType: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case float32 = 0, float16 = 1, bfloat16 = 2, int64 = 3, int32 = 4, bool = 5, uint8 = 6, float64 = 7, int8 = 8,
        int16 = 9

    /// Bytes per element.
    public var itemSize: Int {
        switch self {
        case .float64, .int64: 8
        case .float32, .int32: 4
        case .float16, .bfloat16, .int16: 2
        case .bool, .uint8, .int8: 1
        }
    }

    public var isFloatingPoint: Bool { [.float32, .float16, .bfloat16, .float64].contains(self) }

    /// The name PyTorch prints (`torch.float32`), used in messages and metadata.
    public var description: String {
        switch self {
        case .float32: "float32"
        case .float16: "float16"
        case .bfloat16: "bfloat16"
        case .int64: "int64"
        case .int32: "int32"
        case .bool: "bool"
        case .uint8: "uint8"
        case .float64: "float64"
        case .int8: "int8"
        case .int16: "int16"
        }
    }

    /// Parses the names people type on a command line: `float32`/`fp32`/`f32`, `float16`/`fp16`/`half`, `bfloat16`/`bf16`.
    public init?(name: String) {
        switch name.lowercased() {
        case "float32", "fp32", "f32", "float": self = .float32
        case "float16", "fp16", "f16", "half": self = .float16
        case "bfloat16", "bf16": self = .bfloat16
        case "float64", "fp64", "f64", "double": self = .float64
        case "int64", "i64", "long": self = .int64
        case "int32", "i32", "int": self = .int32
        case "int16", "i16": self = .int16
        case "int8", "i8": self = .int8
        case "uint8", "u8": self = .uint8
        case "bool": self = .bool
        default: return nil
        }
    }
}
