import Foundation
import Testing
import Torch

/// The fixtures written by scripts/parity/make_serialization_fixtures.py, and what they must decode to.
enum SerializationFixtures {
    struct ExpectedTensor: Decodable {
        let dtype: String
        let shape: [Int]
        /// The contiguous row-major bytes.
        let hex: String
        /// Float32/float64 values.
        let values: [Double]?
        /// Float16/bfloat16 raw bits (decoded halves would hide rounding differences).
        let bits: [UInt16]?
        /// Integer and bool values.
        let ints: [Int64]?
    }

    struct ExpectedFile: Decodable {
        let metadata: [String: String]?
        let tensors: [String: ExpectedTensor]
    }

    static func url(_ name: String) -> URL {
        Bundle.module.url(forResource: "Fixtures", withExtension: nil)!.appendingPathComponent("serialization/\(name)")
    }

    static func expected(_ file: String) throws -> ExpectedFile {
        let all = try JSONDecoder().decode([String: ExpectedFile].self, from: Data(contentsOf: url("expected.json")))
        return try #require(all[file], "expected.json has no entry for \(file)")
    }

    /// Checks dtype, shape, exact bytes, and the values decoded as Swift types.
    static func check(
        _ tensor: TensorData, matches expected: ExpectedTensor, name: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(tensor.dtype.description == expected.dtype, "\(name) dtype", sourceLocation: sourceLocation)
        #expect(tensor.shape == expected.shape, "\(name) shape", sourceLocation: sourceLocation)
        #expect(hexString(tensor.bytes) == expected.hex, "\(name) bytes", sourceLocation: sourceLocation)
        #expect(tensor.byteCount == tensor.elementCount * tensor.dtype.itemSize, sourceLocation: sourceLocation)
        if let values = expected.values {
            let decoded: [Double] =
                tensor.dtype == .float64
                ? tensor.elements(as: Double.self) : tensor.elements(as: Float.self).map(Double.init)
            #expect(decoded == values, "\(name) values", sourceLocation: sourceLocation)
        }
        if let bits = expected.bits {
            #expect(tensor.elements(as: UInt16.self) == bits, "\(name) bits", sourceLocation: sourceLocation)
        }
        if let ints = expected.ints {
            #expect(integers(tensor) == ints, "\(name) integers", sourceLocation: sourceLocation)
        }
    }

    /// Checks that `tensors` holds exactly the expected names, each matching.
    static func check(
        _ tensors: [String: TensorData], matches expected: ExpectedFile,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(tensors.keys.sorted() == expected.tensors.keys.sorted(), sourceLocation: sourceLocation)
        for (name, expectedTensor) in expected.tensors {
            guard let tensor = tensors[name] else { continue }
            check(tensor, matches: expectedTensor, name: name, sourceLocation: sourceLocation)
        }
    }

    static func tensorData(from expected: ExpectedTensor) throws -> TensorData {
        let dtype = try #require(DType(name: expected.dtype))
        return try TensorData(dtype: dtype, shape: expected.shape, bytes: bytes(fromHex: expected.hex))
    }

    private static func integers(_ tensor: TensorData) -> [Int64]? {
        switch tensor.dtype {
        case .int64: tensor.elements(as: Int64.self)
        case .int32: tensor.elements(as: Int32.self).map(Int64.init)
        case .int16: tensor.elements(as: Int16.self).map(Int64.init)
        case .int8: tensor.elements(as: Int8.self).map(Int64.init)
        case .uint8, .bool: tensor.elements(as: UInt8.self).map(Int64.init)
        default: nil
        }
    }

    static func hexString(_ bytes: [UInt8]) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    static func bytes(fromHex hex: String) -> [UInt8] {
        let digits = Array(hex.utf8)
        return stride(from: 0, to: digits.count, by: 2).map {
            UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16) ?? 0
        }
    }
}

/// A fresh directory under the system temporary directory, removed by `remove()`.
struct ScratchDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("serialization-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func file(_ name: String) -> URL { url.appendingPathComponent(name) }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Expects `body` to throw a `SerializationError` whose one-line message is exactly `message`.
func expectSerializationError(
    _ message: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) {
    let error = #expect(throws: SerializationError.self, sourceLocation: sourceLocation) { try body() }
    #expect(error?.description == message, sourceLocation: sourceLocation)
}
