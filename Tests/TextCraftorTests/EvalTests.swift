import Foundation
import Testing

@testable import TextCraftor

@Suite struct EvalStatisticsTests {
    @Test func meanAndIntervalMatchHandComputedValues() {
        // 1..5: mean 3, s = √2.5, t(0.975, 4) = 2.776445105, half-width t·s/√5 = 2.776445105·√0.5.
        let m = EvalStatistics.meanInterval([1, 2, 3, 4, 5])
        #expect(m.mean == 3 && m.count == 5)
        #expect(abs(m.standardDeviation! - 2.5.squareRoot()) < 1e-12)
        #expect(abs(m.halfWidth! - 2.776445105 * 0.5.squareRoot()) < 1e-8)
        #expect(abs(m.lower! - (3 - 1.963243161)) < 1e-8 && abs(m.upper! - (3 + 1.963243161)) < 1e-8)
        // Two values 4 and 6: s = √2, t(0.975, 1) = 12.70620474, half-width 12.70620474.
        let two = EvalStatistics.meanInterval([4, 6])
        #expect(two.mean == 5 && abs(two.halfWidth! - 12.70620474) < 1e-7)
        // One value: no interval.
        let one = EvalStatistics.meanInterval([7])
        #expect(one.mean == 7 && one.halfWidth == nil && one.lower == nil)
        // Equal values: a zero-width interval.
        #expect(EvalStatistics.meanInterval([2, 2, 2]).halfWidth == 0)
    }

    @Test(arguments: [(1.0, 12.70620474), (2, 4.30265273), (10, 2.22813885), (30, 2.04227246), (1000, 1.96233908)])
    func studentTQuantilesMatchTheTables(degrees: Double, expected: Double) {
        #expect(abs(EvalStatistics.studentTQuantile(0.975, degreesOfFreedom: degrees) - expected) < 1e-7)
        #expect(abs(EvalStatistics.studentTQuantile(0.025, degreesOfFreedom: degrees) + expected) < 1e-7)
    }

    @Test func winRateCountsStrictWinsOnly() {
        #expect(EvalStatistics.winRate([1, 2, 3], over: [1, 1, 4]) == 1.0 / 3)
        #expect(EvalStatistics.winRate([5, 5], over: [5, 5]) == 0)
        #expect(EvalStatistics.winRate([6, 7], over: [5, 5]) == 1)
    }
}

@Suite struct EvalSummaryTests {
    /// 4 prompts in 2 styles, 2 images each; the "better" variant adds 1 to prompts 0 and 2 and is equal elsewhere.
    func summary() -> EvalSummary {
        let prompts = EvalPromptSet(prompts: [
            EvalPrompt(text: "a", group: "anime"), EvalPrompt(text: "b", group: "anime"),
            EvalPrompt(text: "c", group: "photo"), EvalPrompt(text: "d", group: "photo"),
        ], grouping: .style)
        let original: [[Double]] = [[1, 3, 2, 2, 5, 7, 4, 4], [0.1, 0.3, 0.2, 0.2, 0.5, 0.7, 0.4, 0.4]]
        let better: [[Double]] = [[2, 4, 2, 2, 6, 8, 4, 4], [0.1, 0.3, 0.2, 0.2, 0.5, 0.7, 0.4, 0.4]]
        return EvalSummary(variants: [("original", "own"), ("better", "x")], rewards: ["aesthetic", "clip"], prompts: prompts,
                           imagesPerPrompt: 2, scores: [original, better])
    }

    @Test func meansIntervalsGroupsAndWinRatesArePerPrompt() throws {
        let s = summary()
        let original = s.variants[0].rewards["aesthetic"]!, better = s.variants[1].rewards["aesthetic"]!
        // Per-prompt means: original 2, 2, 6, 4 -> mean 3.5; better 3, 2, 7, 4 -> mean 4.
        #expect(original.overall.mean == 3.5 && better.overall.mean == 4)
        // s of (2, 2, 6, 4) = √(11/3); t(0.975, 3) = 3.182446305.
        #expect(abs(original.overall.halfWidth! - 3.182446305 * (11.0 / 3).squareRoot() / 2) < 1e-8)
        #expect(original.groups["anime"]!.mean == 2 && original.groups["photo"]!.mean == 5)
        #expect(better.groups["anime"]!.mean == 2.5 && better.groups["photo"]!.mean == 5.5)
        #expect(better.styleAverage == 4 && original.styleAverage == 3.5)
        #expect(original.winRate == nil && better.winRate == 0.5)
        // Equal scores: win rate 0 and the same numbers.
        let clip = s.variants[1].rewards["clip"]!
        #expect(clip.winRate == 0 && clip.overall == s.variants[0].rewards["clip"]!.overall)
    }

    @Test func markdownHasARowPerVariantAndAColumnPerReward() {
        let markdown = summary().markdown()
        let tables = markdown.components(separatedBy: "\n\n").filter { $0.hasPrefix("|") }
        #expect(tables.count == 4)  // Table 1, win rates, and per style for each of the 2 rewards
        let first = tables[0].split(separator: "\n")
        #expect(first[0] == "| variant | aesthetic | clip |")
        #expect(first.count == 2 + 2)
        #expect(first[2].hasPrefix("| original | 3.5000 ± ") && first[3].hasPrefix("| better | 4.0000 ± "))
        #expect(tables[1].split(separator: "\n").count == 2 + 1)  // no row for the reference itself
        #expect(tables[2].split(separator: "\n")[0] == "| variant | anime | photo | average |")
        #expect(tables[2].contains("| better | 2.5000 | 5.5000 | 4.0000 |"))
    }

    /// Two schedulers: each variant is counted against the original drawn with its own scheduler.
    @Test func winRatesCountAgainstEachSchedulersOriginal() {
        let prompts = EvalPromptSet(prompts: [EvalPrompt(text: "a", group: "g"), EvalPrompt(text: "b", group: "g")], grouping: .none)
        let scores: [[[Double]]] = [[[1, 1]], [[2, 0]], [[5, 5]], [[6, 6]]]  // one reward, one image per prompt
        let s = EvalSummary(variants: [("original+ddim", ""), ("x+ddim", ""), ("original+euler", ""), ("x+euler", "")],
                            rewards: ["r"], prompts: prompts, imagesPerPrompt: 1, scores: scores, references: [0, 0, 2, 2])
        #expect(s.variants.map(\.reference) == [nil, "original+ddim", nil, "original+euler"])
        // x+ddim beats original+ddim on prompt a only; x+euler beats original+euler on both (against original+ddim
        // it would also win both, so the euler original is what makes x+ddim's 50% and x+euler's 100% differ).
        #expect(s.variants.map { $0.rewards["r"]!.winRate } == [nil, 0.5, nil, 1])
        let markdown = s.markdown()
        #expect(markdown.contains("## Win rate against the original with the same scheduler"))
        #expect(markdown.contains("| x+euler | 100.0% |") && !markdown.contains("| original+euler | 0.0%"))
    }

    @Test func jsonIsStable() throws {
        let a = try summary().json(), b = try summary().json()
        #expect(a == b)
        let decoded = try JSONDecoder().decode(EvalSummary.self, from: a)
        #expect(decoded == summary())
    }
}

@Suite struct EvalPromptSetTests {
    @Test func partiIsShippedAndGroupedByCategory() throws {
        let url = try #require(TextCraftorResources.partiPrompts)
        let parti = try EvalPromptSet.files([url])
        #expect(parti.prompts.count == 1632 && parti.grouping == .category && parti.groups.count == 12)
        let animals = try EvalPromptSet.files([url], category: "animals")
        #expect(animals.prompts.count == 314 && Set(animals.prompts.map(\.group)) == ["Animals"])
        #expect(throws: (any Error).self) { try EvalPromptSet.files([url], category: "Dinosaurs") }
    }

    @Test func sampleIsSeededAndKeepsFileOrder() throws {
        let url = try #require(TextCraftorResources.partiPrompts)
        let parti = try EvalPromptSet.files([url])
        let a = parti.sampled(20, seed: 3), b = parti.sampled(20, seed: 3), c = parti.sampled(20, seed: 4)
        #expect(a == b && a != c && a.prompts.count == 20)
        let positions = a.prompts.map { p in parti.prompts.firstIndex(of: p)! }
        #expect(positions == positions.sorted())
        #expect(parti.limited(to: 5).prompts == Array(parti.prompts.prefix(5)))
    }

    @Test func severalFilesAreStyles() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("styles-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        try Data(#"["a cat", "a dog"]"#.utf8).write(to: folder.appendingPathComponent("anime.json"))
        try Data(#"["a car"]"#.utf8).write(to: folder.appendingPathComponent("photo.json"))
        try Data("\n\n".utf8).write(to: folder.appendingPathComponent("empty.txt"))
        let set = try EvalPromptSet.files(["anime.json", "photo.json"].map { folder.appendingPathComponent($0) })
        #expect(set.grouping == .style && set.groups == ["anime", "photo"])
        #expect(set.prompts == [EvalPrompt(text: "a cat", group: "anime"), EvalPrompt(text: "a dog", group: "anime"),
                                EvalPrompt(text: "a car", group: "photo")])
        #expect(throws: TextCraftorError.invalidPrompts(file: folder.appendingPathComponent("empty.txt").path, message: "no prompts")) {
            try EvalPromptSet.files([folder.appendingPathComponent("empty.txt")])
        }
    }
}
