import Foundation
import Testing
import Torch

@testable import Rewards

@Suite struct PreprocessingTests {
    @Test func trainingPoolsAndNormalises() {
        let image = Tensor.full([1, 3, 448, 448], 0.5)
        let x = ImagePreprocessor()(image, mode: .training)
        #expect(x.shape == [1, 3, 224, 224])
        let expected = zip(ImagePreprocessor.clipMean, ImagePreprocessor.clipStd).map { (0.5 - $0) / $1 }
        let got = x.mean([0, 2, 3]).toArray(Double.self)
        for (g, e) in zip(got, expected) { #expect(abs(g - e) < 1e-6) }
    }

    @Test func evaluationResizesTheShortSideAndCropsTheCentre() {
        // A 300x600 image whose columns 150..<450 are white: after resizing to 224x448 and a centre crop of
        // 224x224, the crop is the white middle.
        var values = [Float](repeating: 0, count: 3 * 300 * 600)
        for c in 0..<3 { for y in 0..<300 { for x in 150..<450 { values[(c * 300 + y) * 600 + x] = 1 } } }
        let x = ImagePreprocessor(mean: [0, 0, 0], std: [1, 1, 1])(Tensor(values, shape: [1, 3, 300, 600]), mode: .evaluation)
        #expect(x.shape == [1, 3, 224, 224])
        #expect(x.narrow(dim: 3, start: 4, length: 216).min().item() > 0.99)
    }

    @Test func gradientsReachTheImages() {
        let image = Tensor.rand([2, 3, 64, 48], generator: Generator(seed: 1)).requiringGrad()
        for mode in PreprocessingMode.allCases {
            image.zeroGrad()
            ImagePreprocessor()(image, mode: mode).sum().backward()
            #expect(image.grad != nil && image.grad!.abs().sum().item() > 0, "\(mode)")
        }
    }
}
