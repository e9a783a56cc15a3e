import Foundation

/// What an evaluation measured: per variant and reward, the mean over prompts with its 95% interval, the win rate
/// against the original, and the same per group. A prompt's score is the mean over its images, so the interval and
/// the win rate count prompts, not images.
public struct EvalSummary: Codable, Equatable, Sendable {
    public struct RewardResult: Codable, Equatable, Sendable {
        public let overall: MeanInterval
        /// The share of prompts on which this variant scores strictly higher than the original (nil for the original).
        public let winRate: Double?
        /// Per group (style or category), when there is more than one group.
        public let groups: [String: MeanInterval]
        /// Styles only: the unweighted mean of the styles' means (the HPSv2 benchmark's "average").
        public let styleAverage: Double?

        enum CodingKeys: String, CodingKey {
            case overall, winRate = "win_rate", groups, styleAverage = "style_average"
        }
    }

    public struct VariantResult: Codable, Equatable, Sendable {
        public let name: String
        /// What the variant is, in words (the encoder folder, the blend weight, the scheduler).
        public let description: String
        /// The variant its win rates are counted against (nil for a reference itself).
        public let reference: String?
        public let rewards: [String: RewardResult]
    }

    /// The score columns, in order (rewards, then any extra measures such as the ShapesWorld oracle's).
    public let rewards: [String]
    public let grouping: EvalPromptSet.Grouping
    public let groups: [String]
    public let prompts: Int
    public let imagesPerPrompt: Int
    /// The variant the win rates are counted against (with several schedulers: the first of the references).
    public let reference: String
    public let variants: [VariantResult]

    enum CodingKeys: String, CodingKey {
        case rewards, grouping, groups, prompts, imagesPerPrompt = "images_per_prompt", reference, variants
    }

    /// - Parameters:
    ///   - scores: `scores[v][r][i]`: variant v, reward r, image i = prompt · imagesPerPrompt + k.
    ///   - references: for each variant, the index of the variant its win rates count against (default: the first,
    ///     for all); a variant that is its own reference has none. Several schedulers: each one's original.
    public init(variants: [(name: String, description: String)], rewards: [String], prompts: EvalPromptSet,
                imagesPerPrompt: Int, scores: [[[Double]]], references: [Int]? = nil) {
        let references = references ?? Array(repeating: 0, count: variants.count)
        precondition(references.count == variants.count && references.allSatisfy { variants.indices.contains($0) })
        let count = prompts.prompts.count
        precondition(!variants.isEmpty && count > 0 && imagesPerPrompt > 0)
        precondition(scores.count == variants.count && scores.allSatisfy { $0.count == rewards.count })
        precondition(scores.allSatisfy { $0.allSatisfy { $0.count == count * imagesPerPrompt } }, "one score per image")
        self.rewards = rewards
        grouping = prompts.grouping
        let groups = prompts.groups
        self.groups = groups
        self.prompts = count
        self.imagesPerPrompt = imagesPerPrompt
        reference = variants[0].name
        let members = Dictionary(grouping: prompts.prompts.indices, by: { prompts.prompts[$0].group })

        func perPrompt(_ images: [Double]) -> [Double] {
            (0..<count).map { p in images[p * imagesPerPrompt..<(p + 1) * imagesPerPrompt].reduce(0, +) / Double(imagesPerPrompt) }
        }
        let byPrompt = scores.map { $0.map(perPrompt) }
        self.variants = variants.indices.map { v in
            var results: [String: RewardResult] = [:]
            for (r, name) in rewards.enumerated() {
                let values = byPrompt[v][r]
                var perGroup: [String: MeanInterval] = [:]
                if groups.count > 1 {
                    for group in groups { perGroup[group] = EvalStatistics.meanInterval(members[group]!.map { values[$0] }) }
                }
                let styleAverage = prompts.grouping == .style && groups.count > 1
                    ? groups.map { perGroup[$0]!.mean }.reduce(0, +) / Double(groups.count) : nil
                results[name] = RewardResult(
                    overall: EvalStatistics.meanInterval(values),
                    winRate: references[v] == v ? nil : EvalStatistics.winRate(values, over: byPrompt[references[v]][r]),
                    groups: perGroup, styleAverage: styleAverage)
            }
            return VariantResult(name: variants[v].name, description: variants[v].description,
                                 reference: references[v] == v ? nil : variants[references[v]].name, rewards: results)
        }
    }

    /// `summary.json`: sorted keys, so equal summaries are equal bytes.
    public func json() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    static func cell(_ m: MeanInterval) -> String {
        m.halfWidth.map { String(format: "%.4f ± %.4f", m.mean, $0) } ?? String(format: "%.4f", m.mean)
    }

    /// Markdown tables shaped like the paper's: Table 1 (one row per variant, one column per reward, mean ± 95%
    /// interval over prompts), the win rates against the reference, and with groups one table per reward (Table 2:
    /// one column per style or category, and for styles their average).
    public func markdown() -> String {
        func table(_ header: [String], _ rows: [[String]]) -> String {
            ([header, header.map { _ in "---" }] + rows).map { "| " + $0.joined(separator: " | ") + " |" }.joined(separator: "\n")
        }
        var out = "## Mean over \(prompts) prompts (\(imagesPerPrompt) image\(imagesPerPrompt == 1 ? "" : "s") each), ± 95% interval\n\n"
        out += table(["variant"] + rewards, variants.map { v in [v.name] + rewards.map { Self.cell(v.rewards[$0]!.overall) } })
        let compared = variants.filter { $0.reference != nil }
        if !compared.isEmpty {
            let against = Set(compared.map { $0.reference! }).count == 1 ? compared[0].reference! : "the original with the same scheduler"
            out += "\n\n## Win rate against \(against) (share of prompts scored higher)\n\n"
            out += table(["variant"] + rewards, compared.map { v in
                [v.name] + rewards.map { String(format: "%.1f%%", 100 * v.rewards[$0]!.winRate!) }
            })
        }
        if groups.count > 1 {
            for reward in rewards {
                out += "\n\n## \(reward) per \(grouping == .style ? "style" : "category")\n\n"
                let average = grouping == .style ? ["average"] : []
                out += table(["variant"] + groups + average, variants.map { v in
                    let result = v.rewards[reward]!
                    return [v.name] + groups.map { String(format: "%.4f", result.groups[$0]!.mean) }
                        + (result.styleAverage.map { [String(format: "%.4f", $0)] } ?? [])
                })
            }
        }
        return out + "\n"
    }
}
