import Foundation
import Testing

@testable import Torch

/// The fixtures folder of this test target (Tests/TorchTests/Fixtures, copied as a resource).
let fixturesURL = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

/// Named tensors from a safetensors fixture made by scripts/parity.
struct Fixture {
    let file: SafeTensorsFile

    init(_ relativePath: String) throws {
        file = try SafeTensorsFile(url: fixturesURL.appendingPathComponent(relativePath))
    }

    func has(_ name: String) -> Bool { file.info(name) != nil }

    func tensor(_ name: String) throws -> Tensor { try Tensor(file.tensorData(name)) }
}

/// Largest |a - b| / (atol + rtol·|b|) over all elements; ≤ 1 means "close" in numpy's sense.
func closeness(_ a: Tensor, _ b: Tensor, atol: Double = 1e-5, rtol: Double = 1e-4) -> Double {
    let x = a.to(.float64), y = b.to(.float64)
    return ((x - y).abs() / (y.abs() * rtol + atol)).max().item()
}

func expectClose(
    _ a: Tensor, _ b: Tensor, atol: Double = 1e-5, rtol: Double = 1e-4, _ what: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(a.shape == b.shape, "\(what): shape \(a.shape) vs expected \(b.shape)", sourceLocation: sourceLocation)
    guard a.shape == b.shape else { return }
    if a.elementCount == 0 { return }
    if atol == 0 && rtol == 0 {
        let differing = a.to(.float64).ne(b.to(.float64)).sum().item()
        #expect(differing == 0, "\(what): \(Int(differing)) elements differ", sourceLocation: sourceLocation)
        return
    }
    let c = closeness(a, b, atol: atol, rtol: rtol)
    #expect(c <= 1, "\(what): off by \(c)× the tolerance", sourceLocation: sourceLocation)
}

/// Resident set size of this process in bytes (Linux).
func residentBytes() -> Int {
    guard let statm = readProcFile("/proc/self/statm") else { return 0 }
    let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
