import Foundation
import ShapesWorld
import StableDiffusion

/// The study's results: every arm's measurements per seed, aggregated, and the findings judged by `StudyRule`.
/// Writes study.json (every number), report.html (one section per finding) and verdicts.md (the table).
public struct StudyReport {
    public let config: StudyConfig
    public let arms: [StudyArm]
    /// Per arm, one result per seed (in seed order).
    public let results: [String: [StudyArmResult]]

    public init(config: StudyConfig, arms: [StudyArm], results: [String: [StudyArmResult]]) {
        self.config = config
        self.arms = arms
        self.results = results.mapValues { $0.sorted { $0.seed < $1.seed } }
    }

    // MARK: - Numbers

    /// One variant per seed, or nil when the arm or the variant was not measured.
    public func variants(_ ref: StudyRef) -> [StudyArmResult.Variant]? {
        guard let list = results[ref.arm], !list.isEmpty else { return nil }
        let found = list.compactMap { $0.variant(ref.variant) }
        return found.count == list.count ? found : nil
    }

    /// The mean over seeds of a variant's mean, with its 95% interval (none with one seed).
    public func aggregate(_ ref: StudyRef, _ metric: StudyMetric) -> MeanInterval? {
        variants(ref).map { EvalStatistics.meanInterval($0.map { metric.value($0.mean) }) }
    }

    public struct Judged {
        public var comparison: StudyComparison
        public var difference: StudyDifference?
        public var verdict: StudyVerdict
        public var a: MeanInterval?
        public var b: MeanInterval?
    }

    public func judge(_ comparison: StudyComparison) -> Judged {
        guard let a = variants(comparison.a), let b = variants(comparison.b), a.count == b.count else {
            return Judged(comparison: comparison, difference: nil, verdict: .notRun, a: nil, b: nil)
        }
        let difference = StudyRule.difference(a, b, metric: comparison.metric)
        return Judged(comparison: comparison, difference: difference,
                      verdict: StudyRule.verdict(difference.interval, direction: comparison.direction),
                      a: aggregate(comparison.a, comparison.metric), b: aggregate(comparison.b, comparison.metric))
    }

    public struct FindingResult {
        public var finding: StudyFinding
        public var verdict: StudyVerdict
        public var primary: [Judged]
        public var oracle: [Judged]
        /// Interpolation: each metric's monotone verdict.
        public var monotone: [(metric: StudyMetric, verdict: StudyVerdict)] = []
        /// Guards: per guarded arm, the changes against the baseline and the oracle gain per unit of reward.
        public var guards: [(arm: String, aesthetic: StudyDifference, quality: StudyDifference, alignment: StudyDifference, gainPerReward: Double)] = []
        /// Guards: the best guard (the highest oracle gain per unit of reward among the guard arms, the CLIP
        /// constraint not counted) against the CLIP constraint alone, on oracle quality: reproduced when the best
        /// guard keeps more real gain, mixed when the two cannot be told apart, not reproduced when it keeps less.
        public var bestGuard: Judged?
    }

    public func evaluate(_ finding: StudyFinding) -> FindingResult {
        let primary = finding.primary.map(judge), oracle = finding.oracle.map(judge)
        var result = FindingResult(finding: finding, verdict: StudyRule.combine(primary.map(\.verdict)), primary: primary, oracle: oracle)
        switch finding.kind {
        case .comparisons: break
        case .monotone(let points):
            let measured = points.map { variants($0.ref) }
            if measured.contains(where: { $0 == nil }) {
                result.verdict = .notRun
            } else {
                let points = measured.compactMap { $0 }
                result.monotone = StudyMetric.allCases.map { metric in (metric, StudyRule.monotone(points, metric: metric)) }
                result.verdict = StudyRule.combine(result.monotone.map(\.verdict))
            }
        case .guards(let guarded):
            for arm in guarded + ["aesthetic-only"] {
                guard let after = variants(StudyRef(arm)), let before = variants(.baseline), after.count == before.count else { continue }
                let aesthetic = StudyRule.difference(after, before, metric: .aesthetic)
                let quality = StudyRule.difference(after, before, metric: .quality)
                let alignment = StudyRule.difference(after, before, metric: .alignment)
                let ratio = aesthetic.interval.mean != 0 ? quality.interval.mean / aesthetic.interval.mean : .nan
                result.guards.append((arm, aesthetic, quality, alignment, ratio))
            }
            let guardNames = Set(StudyArm.guards.map(\.name))
            if let best = result.guards.filter({ guardNames.contains($0.arm) && $0.gainPerReward.isFinite })
                .max(by: { $0.gainPerReward < $1.gainPerReward })
            {
                result.bestGuard = judge(StudyComparison(StudyRef(best.arm), StudyRef(StudyArm.mainName), .quality, direction: 1,
                                                         paper: "the best guard keeps at least the CLIP constraint's real gain"))
            }
        }
        return result
    }

    public var findings: [FindingResult] { StudyFinding.all.map(evaluate) }

    // MARK: - Text

    static func format(_ value: Double, _ metric: StudyMetric) -> String {
        metric == .alignment ? String(format: "%.1f%%", value * 100) : String(format: metric == .clip ? "%.4f" : "%.3f", value)
    }

    static func format(_ interval: MeanInterval?, _ metric: StudyMetric) -> String {
        guard let interval else { return "—" }
        guard let half = interval.halfWidth else { return format(interval.mean, metric) + " (n=1, no interval)" }
        return format(interval.mean, metric) + " ± " + format(half, metric).replacingOccurrences(of: "%", with: "") + (metric == .alignment ? " pp" : "")
    }

    static func formatDifference(_ difference: StudyDifference?, _ metric: StudyMetric) -> String {
        guard let difference else { return "—" }
        let scale = metric == .alignment ? 100.0 : 1.0
        let unit = metric == .alignment ? " pp" : ""
        let digits = metric == .clip ? "%+.4f" : (metric == .alignment ? "%+.1f" : "%+.3f")
        let mean = String(format: digits, difference.interval.mean * scale) + unit
        guard let lower = difference.interval.lower, let upper = difference.interval.upper else { return mean + " (no interval)" }
        return mean + " [" + String(format: digits, lower * scale) + ", " + String(format: digits, upper * scale) + "]"
    }

    /// The markdown table of verdicts (for the README).
    public func markdown() -> String {
        var lines = [
            "| finding | paper | ours (A − B, 95% interval) | verdict |",
            "|---|---|---|---|",
        ]
        for result in findings {
            let ours: String
            switch result.finding.kind {
            case .monotone:
                ours = result.monotone.isEmpty ? "—" : result.monotone.map { "\($0.metric.rawValue): \($0.verdict.rawValue)" }.joined(separator: "; ")
            default:
                ours = (result.primary + [result.bestGuard].compactMap { $0 }).map {
                    "\($0.comparison.a) − \($0.comparison.b), \($0.comparison.metric.title): \(Self.formatDifference($0.difference, $0.comparison.metric))"
                }.joined(separator: "<br>")
            }
            let paper = result.finding.primary.map(\.paper).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
                .joined(separator: "; ")
            lines.append("| \(result.finding.title) | \(paper.isEmpty ? "monotone in W" : paper) | \(ours.isEmpty ? "—" : ours) | \(result.verdict.rawValue) |")
        }
        let seeds = config.seeds == 1 ? "1 seed: intervals over held-out images" : "\(config.seeds) seeds: intervals over seeds"
        lines.append("")
        lines.append("(\(seeds); \(config.steps) steps per arm, \(config.evalPrompts) held-out prompts x \(config.imagesPerPrompt) images.)")
        return lines.joined(separator: "\n")
    }

    // MARK: - Files

    public func write(to folder: URL) throws {
        let json = try JSONSerialization.data(withJSONObject: jsonObject(), options: [.prettyPrinted, .sortedKeys])
        try json.write(to: folder.appendingPathComponent("study.json"), options: .atomic)
        try Data(html().utf8).write(to: folder.appendingPathComponent("report.html"), options: .atomic)
        try Data((markdown() + "\n").utf8).write(to: folder.appendingPathComponent("verdicts.md"), options: .atomic)
    }

    static func intervalObject(_ interval: MeanInterval?) -> Any {
        guard let interval else { return NSNull() }
        return ["mean": interval.mean, "lower": interval.lower ?? NSNull(), "upper": interval.upper ?? NSNull(),
                "n": interval.count] as [String: Any]
    }

    static func differenceObject(_ difference: StudyDifference) -> [String: Any] {
        ["mean": difference.interval.mean, "lower": difference.interval.lower ?? NSNull(),
         "upper": difference.interval.upper ?? NSNull(), "n": difference.interval.count, "basis": difference.basis]
    }

    func judgedObject(_ judged: Judged) -> [String: Any] {
        [
            "a": judged.comparison.a.description, "b": judged.comparison.b.description, "metric": judged.comparison.metric.rawValue,
            "paper_direction": judged.comparison.direction ?? NSNull(), "paper": judged.comparison.paper,
            "a_mean": Self.intervalObject(judged.a), "b_mean": Self.intervalObject(judged.b),
            "difference": judged.difference.map(Self.differenceObject) ?? NSNull(), "verdict": judged.verdict.rawValue,
        ]
    }

    func jsonObject() throws -> [String: Any] {
        let settings = try JSONSerialization.jsonObject(with: JSONEncoder().encode(config))
        var armObjects: [String: Any] = [:]
        for arm in arms {
            guard let list = results[arm.name] else { continue }
            let labels = list.first?.variants.map(\.label) ?? []
            var aggregate: [String: Any] = [:]
            for label in labels {
                var metrics: [String: Any] = [:]
                for metric in StudyMetric.allCases { metrics[metric.rawValue] = Self.intervalObject(self.aggregate(StudyRef(arm.name, label), metric)) }
                aggregate[label] = metrics
            }
            armObjects[arm.name] = [
                "summary": arm.summary,
                "aggregate": aggregate,
                "per_seed": list.map { result -> [String: Any] in
                    [
                        "seed": result.seed, "train_seconds": result.trainSeconds, "eval_seconds": result.evalSeconds,
                        "variants": result.variants.map { variant -> [String: Any] in
                            [
                                "label": variant.label, "blend": variant.blend ?? NSNull(),
                                "finetuned_steps": variant.finetunedSteps ?? NSNull(),
                                "mean": DemoReport.scoresObject(variant.mean),
                                "per_image": variant.scores.map(DemoReport.scoresObject),
                            ]
                        },
                        "history": result.history.map { ["step": $0.step, "loss": $0.loss, "rewards": $0.rewards] as [String: Any] },
                        "probes": result.probes.map { ["step": $0.step, "scores": DemoReport.scoresObject($0.scores)] as [String: Any] },
                    ]
                },
            ] as [String: Any]
        }
        let findingObjects = findings.map { result -> [String: Any] in
            var object: [String: Any] = [
                "id": result.finding.id, "title": result.finding.title, "claim": result.finding.claim,
                "verdict": result.verdict.rawValue, "primary": result.primary.map(judgedObject),
                "oracle": result.oracle.map(judgedObject),
            ]
            if !result.monotone.isEmpty {
                object["monotone"] = Dictionary(uniqueKeysWithValues: result.monotone.map { ($0.metric.rawValue, $0.verdict.rawValue) })
            }
            if !result.guards.isEmpty {
                object["guards"] = result.guards.map {
                    [
                        "arm": $0.arm, "aesthetic_change": Self.differenceObject($0.aesthetic),
                        "quality_change": Self.differenceObject($0.quality), "alignment_change": Self.differenceObject($0.alignment),
                        "quality_gain_per_aesthetic": $0.gainPerReward.isFinite ? $0.gainPerReward as Any : NSNull() as Any,
                    ] as [String: Any]
                }
            }
            if let best = result.bestGuard { object["best_guard_vs_clip_constraint"] = judgedObject(best) }
            return object
        }
        return [
            "study": "TextCraftor on ShapesWorld: the paper's findings, arm by arm, with the oracle",
            "settings": settings, "seeds": config.seedList.map { $0 }, "rule": StudyRule.text,
            "arms": armObjects, "findings": findingObjects,
        ]
    }

    // MARK: - HTML

    static let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

    /// Probe curves of the arms that trained: one panel per metric (aesthetic reward, oracle alignment, oracle
    /// quality), one line per arm (the mean over seeds at each probed step).
    func curvesSVG(_ armNames: [String]) -> String {
        let series = armNames.compactMap { name -> (String, [(Int, ShapesScores)])? in
            guard let list = results[name], let first = list.first, !first.history.isEmpty else { return nil }
            let steps = first.probes.map(\.step)
            let points = steps.compactMap { step -> (Int, ShapesScores)? in
                let scores = list.compactMap { $0.probes.first { $0.step == step }?.scores }
                return scores.isEmpty ? nil : (step, ShapesScores.mean(scores))
            }
            return (name, points)
        }
        guard !series.isEmpty else { return "<p><small>No arm here trained, so there is no curve.</small></p>" }
        let metrics: [StudyMetric] = [.aesthetic, .alignment, .quality]
        let width = 300.0, height = 190.0, margin = 44.0
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width) * metrics.count)\" height=\"\(Int(height) + 18 * ((series.count + 2) / 3))\" font-family=\"sans-serif\" font-size=\"11\">\n"
        let maxStep = Double(series.flatMap { entry in entry.1.map { point in point.0 } }.max() ?? 1)
        for (k, metric) in metrics.enumerated() {
            let x0 = Double(k) * width + margin, x1 = Double(k + 1) * width - 10, y0 = height - 30, y1 = 20.0
            let values = series.flatMap { entry in entry.1.map { point in metric.value(point.1) } }.filter(\.isFinite)
            guard let low = values.min(), let high = values.max() else { continue }
            let span = high > low ? high - low : 1
            svg += "<g><text x=\"\(x0)\" y=\"14\" font-weight=\"bold\">\(metric.title) (probe)</text>"
            svg += "<line x1=\"\(x0)\" y1=\"\(y0)\" x2=\"\(x1)\" y2=\"\(y0)\" stroke=\"#888\"/><line x1=\"\(x0)\" y1=\"\(y1)\" x2=\"\(x0)\" y2=\"\(y0)\" stroke=\"#888\"/>"
            svg += "<text x=\"\(x0 - 4)\" y=\"\(y1 + 4)\" text-anchor=\"end\">\(String(format: "%.3g", high))</text>"
            svg += "<text x=\"\(x0 - 4)\" y=\"\(y0)\" text-anchor=\"end\">\(String(format: "%.3g", low))</text>"
            svg += "<text x=\"\(x0)\" y=\"\(y0 + 14)\">0</text><text x=\"\(x1)\" y=\"\(y0 + 14)\" text-anchor=\"end\">step \(Int(maxStep))</text>\n"
            for (index, (_, points)) in series.enumerated() {
                let coordinates = points.map { point in
                    String(format: "%.1f,%.1f", x0 + (x1 - x0) * Double(point.0) / max(maxStep, 1),
                           y0 - (y0 - y1) * (metric.value(point.1) - low) / span)
                }
                svg += "<polyline fill=\"none\" stroke=\"\(Self.colours[index % Self.colours.count])\" stroke-width=\"2\" points=\"\(coordinates.joined(separator: " "))\"/>\n"
            }
            svg += "</g>\n"
        }
        for (index, (name, _)) in series.enumerated() {
            let x = Double(index % 3) * width + margin, y = height + 4 + 18 * Double(index / 3)
            svg += "<rect x=\"\(x)\" y=\"\(y)\" width=\"14\" height=\"4\" fill=\"\(Self.colours[index % Self.colours.count])\"/>"
            svg += "<text x=\"\(x + 20)\" y=\"\(y + 6)\">\(EvalReport.escape(name))</text>\n"
        }
        return svg + "</svg>\n"
    }

    func stripsHTML(_ refs: [StudyRef]) -> String {
        var rows = ""
        for ref in refs {
            guard let variant = variants(ref)?.first, !variant.strip.isEmpty else { continue }
            rows += "<tr><td class=\"label\">\(EvalReport.escape(ref.description))</td><td><img src=\"data:image/png;base64,\(variant.strip)\" height=\"72\" alt=\"\"></td></tr>\n"
        }
        return rows.isEmpty ? "" : "<table class=\"strips\">\(rows)</table>\n"
    }

    func judgedRows(_ list: [Judged]) -> String {
        list.map { judged in
            let c = judged.comparison
            return "<tr><td>\(EvalReport.escape(c.a.description)) − \(EvalReport.escape(c.b.description))</td><td>\(c.metric.title)</td>"
                + "<td>\(EvalReport.escape(c.paper))</td><td>\(Self.format(judged.a, c.metric))</td><td>\(Self.format(judged.b, c.metric))</td>"
                + "<td>\(Self.formatDifference(judged.difference, c.metric))<br><small>\(judged.difference?.basis ?? "")</small></td>"
                + "<td class=\"v \(Self.verdictClass(judged.verdict))\">\(judged.verdict.rawValue)</td></tr>\n"
        }.joined()
    }

    static func verdictClass(_ verdict: StudyVerdict) -> String {
        switch verdict {
        case .reproduced: "yes"
        case .notReproduced: "no"
        case .mixed: "mixed"
        case .noClaim, .notRun: "none"
        }
    }

    static let tableHead = "<tr><th>A − B</th><th>metric</th><th>paper</th><th>A</th><th>B</th><th>A − B [95%]</th><th>verdict</th></tr>\n"

    func html() -> String {
        let escape = EvalReport.escape
        var sections = ""
        for result in findings {
            let finding = result.finding
            sections += "<section><h2>\(escape(finding.title)) <span class=\"v \(Self.verdictClass(result.verdict))\">\(result.verdict.rawValue)</span></h2>\n"
            sections += "<p>\(escape(finding.claim))</p>\n"
            if !result.primary.isEmpty {
                sections += "<h3>Primary (the verdict)</h3><table>\(Self.tableHead)\(judgedRows(result.primary))</table>\n"
            }
            if case .monotone(let points) = finding.kind {
                sections += "<table><tr><th>W</th>" + StudyMetric.allCases.map { "<th>\($0.title)</th>" }.joined() + "</tr>\n"
                for point in points {
                    sections += "<tr><td>\(point.weight)</td>" + StudyMetric.allCases.map { "<td>\(Self.format(aggregate(point.ref, $0), $0))</td>" }.joined() + "</tr>\n"
                }
                sections += "<tr><td>monotone?</td>" + StudyMetric.allCases.map { metric in
                    let verdict = result.monotone.first { $0.metric == metric }?.verdict ?? .notRun
                    return "<td class=\"v \(Self.verdictClass(verdict))\">\(verdict.rawValue)</td>"
                }.joined() + "</tr></table>\n"
            }
            if !result.guards.isEmpty {
                sections += "<h3>Real gain per unit of reward</h3><table><tr><th>arm</th><th>Δ aesthetic reward</th><th>Δ oracle quality</th><th>Δ oracle alignment</th><th>Δ quality / Δ aesthetic</th></tr>\n"
                for row in result.guards.sorted(by: { ($0.gainPerReward.isFinite ? $0.gainPerReward : -.infinity) > ($1.gainPerReward.isFinite ? $1.gainPerReward : -.infinity) }) {
                    sections += "<tr><td>\(escape(row.arm))</td><td>\(Self.formatDifference(row.aesthetic, .aesthetic))</td><td>\(Self.formatDifference(row.quality, .quality))</td><td>\(Self.formatDifference(row.alignment, .alignment))</td><td>\(row.gainPerReward.isFinite ? String(format: "%+.3f", row.gainPerReward) : "—")</td></tr>\n"
                }
                sections += "</table><p><small>Against the baseline, same prompts and noise. The CLIP constraint (textcraftor) counts as a guard; aesthetic-only has none. Guard arms added to StudyArm.guards appear here.</small></p>\n"
                if let best = result.bestGuard {
                    let outcome = switch best.verdict {
                    case .reproduced: "keeps more real gain than the CLIP constraint alone"
                    case .notReproduced: "keeps less real gain than the CLIP constraint alone"
                    case .mixed: "cannot be told apart from the CLIP constraint alone on real gain: the interval of the difference contains 0"
                    default: "was not compared with the CLIP constraint: \(StudyArm.mainName) was not run"
                    }
                    sections += "<h3>The best guard against the CLIP constraint</h3><table>\(Self.tableHead)\(judgedRows([best]))</table>"
                        + "<p>\(escape(best.comparison.a.arm)), the guard with the most oracle quality per unit of aesthetic reward, \(outcome).</p>\n"
                }
            }
            if !result.oracle.isEmpty {
                sections += "<h3>The oracle's view</h3><table>\(Self.tableHead)\(judgedRows(result.oracle))</table>\n"
            }
            let trainedArms = finding.shown.map(\.arm).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
            sections += "<h3>Over training (held-out probe prompts)</h3>\n" + curvesSVG(trainedArms)
            sections += "<h3>Images (first seed, the same noise in every row)</h3>\n" + stripsHTML(finding.shown)
            sections += "</section>\n"
        }
        var armRows = ""
        for arm in arms {
            let list = results[arm.name] ?? []
            let seconds = list.map(\.trainSeconds).reduce(0, +) / Double(max(list.count, 1))
            armRows += "<tr><td>\(escape(arm.name))</td><td class=\"label\">\(escape(arm.summary))</td>"
                + StudyMetric.allCases.map { "<td>\(Self.format(aggregate(StudyRef(arm.name, arm.recipe == .baseline ? StudyArm.baselineName : StudyEvaluation.finetuned.label), $0), $0))</td>" }.joined()
                + String(format: "<td>%.0f s</td></tr>\n", seconds)
        }
        let seedText = config.seeds == 1 ? "one seed (n=1: no interval over seeds; differences use the per-image interval)" : "\(config.seeds) seeds (\(config.seedList.map(String.init).joined(separator: ", ")))"
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>The TextCraftor study on ShapesWorld</title>
            <style>
            body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
            table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 4px 8px; border-bottom: 1px solid #ddd; text-align: right; vertical-align: top; }
            td.label { text-align: left; } img { image-rendering: pixelated; }
            .v { font-weight: bold; } .yes { color: #137333; } .no { color: #b3261e; } .mixed { color: #9a6700; } .none { color: #666; }
            section { border-top: 2px solid #ccc; margin-top: 2em; }
            </style></head><body>
            <h1>The TextCraftor study on ShapesWorld</h1>
            <p>Every arm trains from the original weights of the bundled tiny Stable Diffusion (\(config.steps) steps, batch \(config.batchSize), \
            DDIM \(config.samplingSteps) steps, guidance \(config.guidance)) and is measured on the same \(config.evalPrompts) held-out prompts \
            (shape-colour pairs training never shows), \(config.imagesPerPrompt) images each, with \(seedText). The aesthetic reward and the \
            CLIP score are what training optimises; alignment and quality come from the oracle, which reads the truth from the pixels.\(config.quick ? " Quick settings: short runs, indicative only." : "")</p>
            <h2>The verdict rule (declared before the numbers)</h2>
            <p>\(escape(StudyRule.text).replacingOccurrences(of: "**", with: ""))</p>
            <h2>Arms</h2>
            <table><tr><th>arm</th><th>recipe</th>\(StudyMetric.allCases.map { "<th>\($0.title)</th>" }.joined())<th>training</th></tr>
            \(armRows)</table>
            \(sections)
            </body></html>

            """
    }
}
