import Foundation
import ShapesWorld
import Testing

@testable import TextCraftor

/// The study's statistics and verdict rule on numbers worked out by hand, and its settings.
@Suite struct StudyTests {
    static func variant(_ aesthetic: Double, images: [Double]? = nil) -> StudyArmResult.Variant {
        let scores = (images ?? [aesthetic]).map { ShapesScores(aesthetic: $0, clipScore: 0.3, alignment: 0.5, quality: 5) }
        return StudyArmResult.Variant(label: "fine-tuned", blend: 1, finetunedSteps: nil,
                                      mean: ShapesScores(aesthetic: aesthetic, clipScore: 0.3, alignment: 0.5, quality: 5),
                                      scores: scores, strip: "")
    }

    static func interval(_ mean: Double, _ half: Double?) -> MeanInterval {
        MeanInterval(mean: mean, halfWidth: half, count: half == nil ? 1 : 3, standardDeviation: half)
    }

    @Test func theVerdictRuleReadsTheIntervalInThePapersDirection() {
        // Wholly above 0: reproduced when the paper says A > B, not reproduced when it says A < B.
        #expect(StudyRule.verdict(Self.interval(1, 0.5), direction: 1) == .reproduced)
        #expect(StudyRule.verdict(Self.interval(1, 0.5), direction: -1) == .notReproduced)
        // Wholly below 0.
        #expect(StudyRule.verdict(Self.interval(-1, 0.5), direction: 1) == .notReproduced)
        #expect(StudyRule.verdict(Self.interval(-1, 0.5), direction: -1) == .reproduced)
        // Containing 0 (the edge included): mixed either way.
        #expect(StudyRule.verdict(Self.interval(0.4, 0.5), direction: 1) == .mixed)
        #expect(StudyRule.verdict(Self.interval(0.5, 0.5), direction: 1) == .mixed)
        #expect(StudyRule.verdict(Self.interval(-0.4, 0.5), direction: -1) == .mixed)
        // No interval (one value): mixed; no direction: no claim.
        #expect(StudyRule.verdict(Self.interval(3, nil), direction: 1) == .mixed)
        #expect(StudyRule.verdict(Self.interval(1, 0.5), direction: nil) == .noClaim)
    }

    @Test func aFindingIsReproducedOnlyWhenEveryPrimaryComparisonIs() {
        #expect(StudyRule.combine([.reproduced, .reproduced]) == .reproduced)
        #expect(StudyRule.combine([.reproduced, .mixed]) == .mixed)
        #expect(StudyRule.combine([.reproduced, .notReproduced]) == .notReproduced)
        #expect(StudyRule.combine([.mixed, .notReproduced]) == .notReproduced)
        #expect(StudyRule.combine([.reproduced, .noClaim]) == .reproduced)
        #expect(StudyRule.combine([.noClaim]) == .noClaim)
        #expect(StudyRule.combine([.reproduced, .notRun]) == .notRun)
    }

    @Test func differencesArePairedBySeedWithStudentsT() throws {
        // A − B per seed: 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.302652730, half-width 4.302652730/√3 = 2.484138.
        let a = [5.0, 7, 9].map { Self.variant($0) }, b = [4.0, 5, 6].map { Self.variant($0) }
        let difference = StudyRule.difference(a, b, metric: .aesthetic)
        #expect(difference.basis == "seeds")
        #expect(abs(difference.interval.mean - 2) < 1e-12)
        #expect(abs(try #require(difference.interval.halfWidth) - 2.484138) < 1e-6)
        #expect(StudyRule.verdict(difference.interval, direction: 1) == .mixed)  // [-0.48, 4.48] contains 0
        // Two seeds, 0.1 and 0.3: s = 0.1414214, t(0.975, 1) = 12.70620474, half-width 12.70620474·0.1/1 = 1.270620.
        let two = StudyRule.difference([Self.variant(1.1), Self.variant(1.3)], [Self.variant(1), Self.variant(1)], metric: .aesthetic)
        #expect(abs(try #require(two.interval.halfWidth) - 1.270620474) < 1e-6)
        // Five seeds, all +1 ± a little: reproduced.
        let five = StudyRule.difference([1.0, 1.1, 0.9, 1.05, 0.95].map { Self.variant(5 + $0) }, (0..<5).map { _ in Self.variant(5) },
                                        metric: .aesthetic)
        // s = √(0.025/4) = 0.0790569, t(0.975, 4) = 2.776445105: half-width 2.776445105·s/√5 = 0.0981622.
        #expect(abs(try #require(five.interval.halfWidth) - 0.0981622) < 1e-6)
        #expect(StudyRule.verdict(five.interval, direction: 1) == .reproduced)
        #expect(StudyRule.verdict(five.interval, direction: -1) == .notReproduced)
    }

    @Test func withOneSeedTheIntervalIsOverImages() throws {
        // Per image: 1, 2, 3, 4 (a − b): mean 2.5, s = √(5/3), t(0.975, 3) = 3.182446305, half 3.182446305·√(5/3)/2.
        let a = Self.variant(0, images: [2, 4, 6, 8]), b = Self.variant(0, images: [1, 2, 3, 4])
        let difference = StudyRule.difference([a], [b], metric: .aesthetic)
        #expect(difference.basis == "images (n=1 seed)")
        #expect(difference.interval.count == 4)
        #expect(abs(difference.interval.mean - 2.5) < 1e-12)
        let expected: Double = 3.182446305 * (5.0 / 3).squareRoot() / 2
        let half = try #require(difference.interval.halfWidth)
        #expect(abs(half - expected) < 1e-6)
    }

    @Test func monotoneSweeps() {
        func seeds(_ values: [Double]) -> [StudyArmResult.Variant] { values.map { Self.variant($0) } }
        // Rising at every seed and every step: reproduced.
        let risingValues: [[Double]] = [[1.0, 1.1, 1.2], [2, 2.1, 2.3], [3, 3.2, 3.1], [4, 4.1, 4.2]]
        let rising = risingValues.map(seeds)
        #expect(StudyRule.monotone(rising, metric: .aesthetic) == .reproduced)
        // Rising overall, but one step falls at every seed: not reproduced.
        let dipValues: [[Double]] = [[1.0, 1.1, 1.2], [3, 3.1, 3.2], [2, 2.1, 2.1], [4, 4.1, 4.2]]
        let dip = dipValues.map(seeds)
        #expect(StudyRule.monotone(dip, metric: .aesthetic) == .notReproduced)
        // No overall change: mixed.
        let flatValues: [[Double]] = [[1.0, 1.2, 0.9], [1.1, 1, 1], [1, 1.1, 1.05]]
        let flat = flatValues.map(seeds)
        #expect(StudyRule.monotone(flat, metric: .aesthetic) == .mixed)
    }

    @Test func theBestGuardIsTheOneWithTheMostRealGainPerRewardAndIsJudgedAgainstTheCLIPConstraint() throws {
        // Three seeds; per arm (aesthetic, quality) means, the baseline at (3, 2).
        func arm(_ name: String, _ points: [(Double, Double)]) -> [StudyArmResult] {
            points.enumerated().map { seed, point in
                let scores = ShapesScores(aesthetic: point.0, clipScore: 0.3, alignment: 0.5, quality: point.1)
                let label = name == StudyArm.baselineName ? name : StudyEvaluation.finetuned.label
                return StudyArmResult(arm: name, seed: UInt64(seed), settings: StudyConfig(), trainSeconds: 0, evalSeconds: 0,
                                      history: [], probes: [],
                                      variants: [.init(label: label, blend: 1, finetunedSteps: nil, mean: scores, scores: [scores], strip: "")])
            }
        }
        let results: [String: [StudyArmResult]] = [
            "baseline": arm("baseline", [(3, 2), (3, 2), (3, 2)]),
            "textcraftor": arm("textcraftor", [(5, 3), (5, 3.2), (5, 2.8)]),  // Δ quality 1 per Δ aesthetic 2: 0.5
            "aesthetic-only": arm("aesthetic-only", [(6, 1), (6, 1), (6, 1)]),
            "guard-proximity": arm("guard-proximity", [(4, 2.5), (4, 2.5), (4, 2.5)]),  // 0.5 / 1 = 0.5
            "guard-early-stop": arm("guard-early-stop", [(5, 4), (5, 4.1), (5, 3.9)]),  // 2 / 2 = 1: the best
        ]
        let report = StudyReport(config: StudyConfig(), arms: StudyArm.all, results: results)
        let guards = try #require(report.findings.first { $0.finding.id == "guards" })
        let best = try #require(guards.bestGuard)
        #expect(best.comparison.a.arm == "guard-early-stop" && best.comparison.b.arm == "textcraftor")
        #expect(best.comparison.metric == .quality)
        // Per seed: 4 − 3, 4.1 − 3.2, 3.9 − 2.8 = 1, 0.9, 1.1: mean 1, s = 0.1, half-width 4.302652730·0.1/√3.
        let difference = try #require(best.difference)
        #expect(abs(difference.interval.mean - 1) < 1e-12)
        #expect(abs(try #require(difference.interval.halfWidth) - 0.2484138) < 1e-6)
        #expect(best.verdict == .reproduced)
        #expect(report.markdown().contains("guard-early-stop − textcraftor, oracle quality: +1.000 [+0.752, +1.248]"))
        // The finding's own verdict is still the hacking's, not the ranking's.
        #expect(guards.primary.count == 2)
        // Without the CLIP-constraint arm the best guard is named but not compared, and the report says so.
        let alone = StudyReport(config: StudyConfig(), arms: StudyArm.all, results: results.filter { $0.key != "textcraftor" })
        let unjudged = try #require(alone.findings.first { $0.finding.id == "guards" }?.bestGuard)
        #expect(unjudged.comparison.a.arm == "guard-early-stop" && unjudged.verdict == .notRun && unjudged.difference == nil)
        #expect(alone.html().contains("guard-early-stop, the guard with the most oracle quality per unit of aesthetic reward, was not compared with the CLIP constraint: textcraftor was not run."))
    }

    @Test func armsAreChosenByNameWithWhatTheyStartFrom() throws {
        var config = StudyConfig()
        #expect(try config.selectedArms().map(\.name) == StudyArm.all.map(\.name))
        config.arms = "mix"
        #expect(try config.selectedArms().map(\.name) == ["baseline", "aesthetic-only", "clip-only", "mix"])
        config.arms = "textcraftor+unet, direct"
        #expect(try config.selectedArms().map(\.name) == ["baseline", "textcraftor", "direct", "textcraftor+unet"])
        config.arms = "textcraftor,nope"
        #expect(throws: TextCraftorError.self) { try config.validate() }
        do {
            try config.validate()
        } catch {
            #expect("\(error)".hasPrefix("arms: unknown arm \"nope\" (known: baseline, textcraftor, direct,"))
        }
        // Every arm a finding reads exists; names are unique.
        let names = Set(StudyArm.all.map(\.name))
        #expect(names.count == StudyArm.all.count)
        for finding in StudyFinding.all { #expect(finding.arms.isSubset(of: names), "\(finding.id)") }
    }

    @Test func armRecipesBecomeTrainingConfigs() throws {
        var config = StudyConfig.quick
        config.out = FileManager.default.temporaryDirectory.appendingPathComponent("study-\(UUID().uuidString)").path
        let study = try Study(config: config)
        let window = try study.trainingConfig(try #require(StudyArm.named("window-10")?.training), seed: 7)
        #expect(window.gradientWindow == 10 && window.seed == 7 && window.maxSteps == config.steps && window.learningRate == config.lr)
        let unet = try study.trainingConfig(try #require(StudyArm.named("textcraftor+unet")?.training), seed: 0)
        #expect(unet.train == .unet && unet.learningRate == config.unetLr)
        let token = try study.trainingConfig(try #require(StudyArm.named("token")?.training), seed: 0)
        #expect(token.adapter == .token && token.token == "<shapes>" && token.learningRate == config.tokenLr)
        // Extra training keys by name (how the guard arms plug in), checked like the file's.
        let keyed = try study.trainingConfig(StudyTraining(keys: ["max_grad_norm": .number(1)]), seed: 0)
        #expect(keyed.maxGradNorm == 1)
        #expect(throws: TextCraftorError.self) { try study.trainingConfig(StudyTraining(keys: ["no_such_key": .flag(true)]), seed: 0) }
        #expect(study.rewardTerms(StudyTraining()).map(\.name) == ["aesthetic", "clip"])
        #expect(study.rewardTerms(StudyTraining()).map(\.gamma) == [1, config.clipWeight])
        #expect(study.rewardTerms(try #require(StudyArm.named("aesthetic-only")?.training)).map(\.name) == ["aesthetic"])
    }

    @Test func directDataIsWhatTrainModeDirectReads() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("study-pairs-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: folder) }
        try Study.renderPairs(count: 5, seed: 1, to: folder)
        let data = try PairedData(contentsOf: folder)
        #expect(data.pairs.count == 5)
        #expect(data.pairs.allSatisfy { !$0.caption.isEmpty })
        #expect(data.pairs.map(\.image.lastPathComponent) == (0..<5).map { String(format: "%05d.png", $0) })
    }
}
