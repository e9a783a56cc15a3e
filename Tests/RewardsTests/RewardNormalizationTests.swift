import Foundation
import Testing
import Torch

@testable import Rewards

/// A reward that returns the scores it is given, in order, one batch per call (its gradient is 1 per image).
final class ScriptedReward: Reward {
    let name: String
    var preprocessing = PreprocessingMode.training
    var batches: [[Double]]

    init(_ name: String, _ batches: [[Double]]) {
        self.name = name
        self.batches = batches
    }

    func score(_ images: Tensor, prompts: [String]) throws -> Tensor {
        let values = batches.removeFirst()
        return images.reshape([images.size(0), -1]).mean(dim: 1) * 0 + Tensor(values.map(Float.init), shape: [values.count])
    }
}

@Suite struct RewardNormalizationTests {
    /// Welford's running moments equal the two-pass mean and sample standard deviation, added in any batching.
    @Test func runningMomentsAreTheSampleMeanAndStd() {
        let values = [21.3, 19.8, 22.4, 20.1, 20.9, 18.7, 23.0]
        var moments = RunningMoments()
        moments.add(Array(values[0..<1]))
        #expect(moments.standardDeviation == nil)
        moments.add(Array(values[1..<4]))
        moments.add(Array(values[4...]))
        let mean = values.reduce(0, +) / Double(values.count)
        let std = (values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count - 1)).squareRoot()
        #expect(moments.count == 7)
        #expect(abs(moments.mean - mean) < 1e-12)
        #expect(abs(moments.standardDeviation! - std) < 1e-12)
        let decoded = try! JSONDecoder().decode(RunningMoments.self, from: JSONEncoder().encode(moments))
        #expect(decoded == moments)
    }

    /// none: the authors' scales; fixed: (R - mean) / std with the table's numbers and scale 1; contributions are
    /// γ · scale · N(R) batch means and sum to the total's mean.
    @Test func fixedAndNoneWeighAsDocumented() throws {
        let images = Tensor.zeros([2, 3, 4, 4])
        for mode in [RewardNormalization.none, .fixed] {
            let weighted = WeightedReward(normalization: mode)
            weighted.add(ScriptedReward("pickscore", [[20.0, 22.5]]), gamma: 1)
            weighted.add(ScriptedReward("hpsv2", [[0.26, 0.30]]), gamma: 0.5)
            let (total, terms) = try weighted.evaluate(images, prompts: ["a"])
            #expect(terms.map(\.name) == ["pickscore", "hpsv2"])
            #expect(weighted.terms.map(\.scale) == (mode == .none ? [1, 100] : [1, 1]))
            let expected: [Double] = mode == .none
                ? [20.0 + 0.5 * 100 * 0.26, 22.5 + 0.5 * 100 * 0.30]
                : [(20.0 - 21) / 1 + 0.5 * (0.26 - 0.27) / 0.015, (22.5 - 21) / 1 + 0.5 * (0.30 - 0.27) / 0.015]
            for (a, b) in zip(total.toArray(Double.self), expected) { #expect(abs(a - b) < 1e-4, "\(mode): \(a) vs \(b)") }
            let contributions = weighted.lastContributions
            #expect(contributions.map(\.name) == ["pickscore", "hpsv2"])
            let sum = contributions.reduce(0) { $0 + $1.value }
            #expect(abs(sum - total.mean().to(.float64).item()) < 1e-5)
            #expect(weighted.contributionMetrics.map(\.0) == ["pickscore_contribution", "hpsv2_contribution"])
        }
    }

    /// running: each batch joins the moments before it is normalised; with one score the fixed statistics stand in;
    /// the gradient is 1/std of the running std.
    @Test func runningNormalisesWithTheMomentsSoFar() throws {
        let weighted = WeightedReward(normalization: .running)
        weighted.add(ScriptedReward("clip", [[0.31], [0.25, 0.28], [0.22, 0.35]]), gamma: 2)
        // One score: the fixed mean and std (0.28, 0.03).
        let (first, _) = try weighted.evaluate(Tensor.zeros([1, 3, 2, 2]), prompts: ["a"])
        #expect(abs(first.item() - 2 * (0.31 - 0.28) / 0.03) < 1e-4)
        let (second, _) = try weighted.evaluate(Tensor.zeros([2, 3, 2, 2]), prompts: ["a"])
        // The scores are float32: the moments hold their exact values.
        func f32(_ values: [Double]) -> [Double] { values.map { Double(Float($0)) } }
        var moments = RunningMoments()
        moments.add(f32([0.31, 0.25, 0.28]))
        #expect(weighted.runningMoments["clip"] == moments)
        for (a, r) in zip(second.toArray(Double.self), [0.25, 0.28]) {
            #expect(abs(a - 2 * (r - moments.mean) / moments.standardDeviation!) < 1e-4)
        }
        // The gradient with respect to the images' scores is γ / std (the mean shift has none).
        let images = Tensor.zeros([2, 3, 2, 2]).requiringGrad()
        let (third, _) = try weighted.evaluate(images, prompts: ["a"])
        moments.add(f32([0.22, 0.35]))
        third.sum().backward()
        #expect(weighted.runningMoments["clip"]!.count == 5)
        #expect(abs(third.toArray(Double.self)[1] - 2 * (0.35 - moments.mean) / moments.standardDeviation!) < 1e-4)
        #expect(images.grad != nil)
    }
}
