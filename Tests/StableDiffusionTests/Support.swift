import Foundation
import NN
import Testing
import Torch

@testable import StableDiffusion

/// Tests/StableDiffusionTests/Fixtures, copied as a resource.
let fixturesURL = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

/// The tiny diffusers folders of scripts/parity/make_sd_fixtures.py and the outputs diffusers computed with them.
enum TinySD: String, CaseIterable, Sendable {
    case sd15, sd2

    var folder: URL { fixturesURL.appendingPathComponent("sd/tiny-\(rawValue)") }

    func outputs() throws -> SafeTensorsFile {
        try SafeTensorsFile(url: fixturesURL.appendingPathComponent("sd/outputs_\(rawValue).safetensors"))
    }

    func output(_ name: String) throws -> Tensor { try outputs().tensor(name) }
}

func maxAbsDifference(_ a: Tensor, _ b: Tensor) -> Double {
    (a.to(.float64) - b.to(.float64)).abs().max().item()
}

/// A fresh temporary folder, removed by the caller's `defer`.
func temporaryFolder(_ name: String = "sd") throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
