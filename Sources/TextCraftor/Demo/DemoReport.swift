import Foundation
import ShapesWorld
import StableDiffusion
import Torch

/// The demo's results and the files that show them: grid.png, curves.svg, metrics.json and report.html.
public struct DemoReport {
    var bundle: String
    var terms: [(name: String, gamma: Double)]
    var clipConstraint: Bool
    var settings: TrainingConfig
    var trainPromptCount: Int
    var baseline: DemoEvaluation
    var finetuned: DemoEvaluation
    var blends: [(weight: Double, result: DemoEvaluation)]
    /// Means on training prompts (the same number of prompts and images), before and after.
    var seen: (before: ShapesScores, after: ShapesScores)
    var history: [StepReport]
    var trainSeconds: Double
    var gridRows: Int
    /// `--compare-adapters`: full, lora and token, each trained from the original weights (empty otherwise).
    public var adapters: [DemoAdapterResult] = []

    public var adapter: Adapter { settings.adapter }

    /// The targets the demo is held to: the aesthetic reward up by 15% relative, alignment down by at most 2 points.
    public static let aestheticTarget = 0.15
    public static let alignmentDropLimit = 2.0

    public var before: ShapesScores { baseline.mean }
    public var after: ShapesScores { finetuned.mean }
    public var aestheticChange: Double { after.aesthetic / before.aesthetic - 1 }
    /// In percentage points.
    public var alignmentChange: Double { (after.alignment - before.alignment) * 100 }
    public var targetsMet: Bool { aestheticChange >= Self.aestheticTarget && -alignmentChange <= Self.alignmentDropLimit }

    // MARK: - Text

    /// The header of a scores table whose labels take `width` characters.
    public static func header(width: Int = 14) -> String {
        String(repeating: " ", count: width) + "aesthetic".leftPad(10) + "CLIP score".leftPad(12) + "alignment".leftPad(11)
            + "quality".leftPad(10)
    }

    /// A row of a scores table.
    public static func row(_ label: String, _ s: ShapesScores, width: Int = 14) -> String {
        label.padding(toLength: width, withPad: " ", startingAt: 0)
            + String(format: "%10.3f %11.4f %10.1f%% %9.2f", s.aesthetic, s.clipScore, s.alignment * 100, s.quality)
    }

    static func changeRow(_ before: ShapesScores, _ after: ShapesScores) -> String {
        "change".padding(toLength: 14, withPad: " ", startingAt: 0)
            + String(format: "%+9.1f%% %+10.1f%% %+8.1f pp %+8.1f%%", (after.aesthetic / before.aesthetic - 1) * 100,
                     (after.clipScore / before.clipScore - 1) * 100, (after.alignment - before.alignment) * 100,
                     (after.quality / before.quality - 1) * 100)
    }

    public func table() -> String {
        let row = { Self.row($0, $1) }
        var lines = [
            "held-out prompts: \(Set(baseline.prompts).count) x \(imagesPerPrompt) images",
            Self.header(),
            row("original", before),
        ]
        for (weight, result) in blends { lines.append(row("blend \(weight)", result.mean)) }
        lines.append(row("fine-tuned", after))
        lines.append(Self.changeRow(before, after))
        lines += ["", "training prompts (sampled from in training):", Self.header(), row("original", seen.before),
                  row("fine-tuned", seen.after), Self.changeRow(seen.before, seen.after)]
        if !adapters.isEmpty {
            lines += ["", "adapters compared (held-out prompts, the same noise; peak memory: the process's peak so far):",
                      Self.header() + "  aes. chg  align chg  file MB    trained  step s  peak MB", row("original", before)]
            for result in adapters {
                lines.append(row(result.adapter.rawValue, result.scores) + String(
                    format: " %+8.1f%% %+7.1f pp %8.3f %10d %7.3f %8.0f", (result.scores.aesthetic / before.aesthetic - 1) * 100,
                    (result.scores.alignment - before.alignment) * 100, Double(result.fileBytes) / 1e6,
                    result.trainedParameters, result.stepSeconds, result.peakMemoryMB))
            }
        }
        return lines.joined(separator: "\n")
    }

    static func adapterObject(_ result: DemoAdapterResult, before: ShapesScores) -> [String: Any] {
        [
            "adapter": result.adapter.rawValue, "scores": scoresObject(result.scores),
            "aesthetic_relative": result.scores.aesthetic / before.aesthetic - 1,
            "alignment_pp": (result.scores.alignment - before.alignment) * 100,
            "file_bytes": result.fileBytes, "trained_parameters": result.trainedParameters,
            "step_seconds": result.stepSeconds, "peak_memory_mb": result.peakMemoryMB,
        ]
    }

    public func verdict() -> String {
        let aesthetic = String(format: "aesthetic reward %+.1f%% (target: at least +%.0f%%)", aestheticChange * 100, Self.aestheticTarget * 100)
        let alignment = String(format: "oracle alignment %+.1f pp (target: a drop of at most %.0f pp)", alignmentChange, Self.alignmentDropLimit)
        let constraint = clipConstraint ? "" : " [no CLIP constraint]"
        return "\(aesthetic); \(alignment): \(targetsMet ? "met" : "not met")\(constraint)"
    }

    // MARK: - Files

    public func write(to folder: URL) throws {
        try gridPNG().write(to: folder.appendingPathComponent("grid.png"), options: .atomic)
        try Data(curvesSVG().utf8).write(to: folder.appendingPathComponent("curves.svg"), options: .atomic)
        let metrics = try JSONSerialization.data(withJSONObject: metricsObject(), options: [.prettyPrinted, .sortedKeys])
        try metrics.write(to: folder.appendingPathComponent("metrics.json"), options: .atomic)
        try Data(html().utf8).write(to: folder.appendingPathComponent("report.html"), options: .atomic)
    }

    /// The grid's columns: (title, evaluation), in the order of the image grid.
    var columns: [(String, DemoEvaluation)] {
        [("original", baseline), ("fine-tuned", finetuned)] + blends.map { ("blend \($0.weight)", $0.result) }
    }

    var imagesPerPrompt: Int { baseline.prompts.count / max(Set(baseline.prompts).count, 1) }

    /// 32x32 HWC bytes of image `index` of an evaluation.
    func pixels(_ evaluation: DemoEvaluation, _ index: Int) -> [UInt8] {
        evaluation.images.narrow(dim: 0, start: index, length: 1).contiguous().toArray(UInt8.self)
    }

    func gridPNG() -> Data {
        var images: [[UInt8]] = []
        for row in 0..<gridRows {
            for (_, evaluation) in columns { images.append(pixels(evaluation, row * imagesPerPrompt)) }
        }
        let sheet = Renderer.contactSheet(images, columns: columns.count, scale: 4)
        return PNG.encode(pixels: sheet.pixels, width: sheet.width, height: sheet.height)
    }

    /// One panel per series (the loss and each reward's batch mean), raw in light and a moving average in dark.
    func curvesSVG() -> String {
        var series: [(String, [Double])] = [("loss", history.map(\.loss))]
        for name in Set(history.flatMap { $0.rewards.keys }).sorted() {
            series.append((name == "clip" ? "CLIP score" : "\(name) reward", history.map { $0.rewards[name] ?? .nan }))
        }
        let width = 300.0, height = 200.0, margin = 40.0
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width) * series.count)" height="\(Int(height))" \
            font-family="sans-serif" font-size="11">

            """
        for (k, (title, values)) in series.enumerated() {
            let x0 = Double(k) * width + margin, x1 = Double(k + 1) * width - 10, y0 = height - 30, y1 = 20.0
            let finite = values.filter(\.isFinite)
            guard let low = finite.min(), let high = finite.max() else { continue }
            let span = high > low ? high - low : 1
            func point(_ i: Int, _ v: Double) -> String {
                let x = values.count > 1 ? x0 + (x1 - x0) * Double(i) / Double(values.count - 1) : x0
                return String(format: "%.1f,%.1f", x, y0 - (y0 - y1) * (v - low) / span)
            }
            let window = max(1, values.count / 10)
            let smooth = values.indices.map { i -> Double in
                let part = values[max(0, i - window + 1)...i].filter(\.isFinite)
                return part.isEmpty ? .nan : part.reduce(0, +) / Double(part.count)
            }
            let raw = values.enumerated().filter { $0.element.isFinite }.map { point($0.offset, $0.element) }
            let mean = smooth.enumerated().filter { $0.element.isFinite }.map { point($0.offset, $0.element) }
            svg += """
                <g><text x="\(x0)" y="14" font-weight="bold">\(title)</text>
                <line x1="\(x0)" y1="\(y0)" x2="\(x1)" y2="\(y0)" stroke="#888"/><line x1="\(x0)" y1="\(y1)" x2="\(x0)" y2="\(y0)" stroke="#888"/>
                <text x="\(x0 - 4)" y="\(y1 + 4)" text-anchor="end">\(String(format: "%.3g", high))</text>
                <text x="\(x0 - 4)" y="\(y0)" text-anchor="end">\(String(format: "%.3g", low))</text>
                <text x="\(x0)" y="\(y0 + 14)">1</text><text x="\(x1)" y="\(y0 + 14)" text-anchor="end">step \(values.count)</text>
                <polyline fill="none" stroke="#9ec5e8" stroke-width="1" points="\(raw.joined(separator: " "))"/>
                <polyline fill="none" stroke="#1f5f99" stroke-width="2" points="\(mean.joined(separator: " "))"/></g>

                """
        }
        return svg + "</svg>\n"
    }

    public static func scoresObject(_ s: ShapesScores) -> [String: Any] {
        ["aesthetic": s.aesthetic, "clip_score": s.clipScore, "alignment": s.alignment, "quality": s.quality]
    }

    func metricsObject() -> [String: Any] {
        var perPrompt: [[String: Any]] = []
        let k = imagesPerPrompt
        for start in stride(from: 0, to: baseline.prompts.count, by: k) {
            perPrompt.append([
                "prompt": baseline.prompts[start],
                "baseline": Self.scoresObject(ShapesScores.mean(Array(baseline.scores[start..<start + k]))),
                "finetuned": Self.scoresObject(ShapesScores.mean(Array(finetuned.scores[start..<start + k]))),
            ])
        }
        return [
            "demo": "ShapesWorld: prompt-based TextCraftor on the text encoder",
            "bundle": bundle,
            "rewards": terms.map { ["name": $0.name, "gamma": $0.gamma] },
            "clip_constraint": clipConstraint,
            "settings": [
                "steps": settings.maxSteps, "learning_rate": settings.learningRate, "batch_size": settings.batchSize,
                "sampling_steps": settings.samplingSteps, "grad_window": settings.gradientWindow,
                "guidance": settings.guidanceScale, "seed": settings.seed, "train_prompts": trainPromptCount,
                "adapter": adapter.rawValue,
            ] as [String: Any],
            "evaluation": ["split": "held-out", "prompts": Set(baseline.prompts).count, "images_per_prompt": k],
            "baseline": Self.scoresObject(before),
            "finetuned": Self.scoresObject(after),
            "blends": Dictionary(uniqueKeysWithValues: blends.map { ("\($0.weight)", Self.scoresObject($0.result.mean)) }),
            "change": [
                "aesthetic_relative": aestheticChange, "clip_score_relative": after.clipScore / before.clipScore - 1,
                "alignment_pp": alignmentChange, "quality_relative": after.quality / before.quality - 1,
            ],
            "targets": [
                "aesthetic_relative_min": Self.aestheticTarget, "alignment_drop_pp_max": Self.alignmentDropLimit,
                "met": targetsMet,
            ] as [String: Any],
            "training": [
                "seconds": trainSeconds,
                "history": history.map { ["step": $0.step, "loss": $0.loss, "rewards": $0.rewards] as [String: Any] },
            ] as [String: Any],
            "per_prompt": perPrompt,
            "adapter": adapter.rawValue,
            "adapters": adapters.map { Self.adapterObject($0, before: before) },
            "training_prompts": ["baseline": Self.scoresObject(seen.before), "finetuned": Self.scoresObject(seen.after)],
        ]
    }

    func html() -> String {
        let escape = EvalReport.escape
        func image(_ pixels: [UInt8]) -> String {
            let png = PNG.encode(pixels: pixels, width: Renderer.side, height: Renderer.side).base64EncodedString()
            return "<img src=\"data:image/png;base64,\(png)\" width=\"96\" height=\"96\" alt=\"\">"
        }
        func cells(_ s: ShapesScores) -> String {
            String(format: "<td>%.3f</td><td>%.4f</td><td>%.1f%%</td><td>%.2f</td>", s.aesthetic, s.clipScore, s.alignment * 100, s.quality)
        }
        var rows = "<tr><td>original</td>\(cells(before))</tr>\n"
        for (weight, result) in blends { rows += "<tr><td>blend \(weight)</td>\(cells(result.mean))</tr>\n" }
        rows += "<tr><td><b>fine-tuned</b></td>\(cells(after))</tr>\n"
        var grid = "<tr><th>prompt</th>" + columns.map { "<th>\($0.0)</th>" }.joined() + "</tr>\n"
        for row in 0..<gridRows {
            let index = row * imagesPerPrompt
            grid += "<tr><td class=\"prompt\">\(escape(baseline.prompts[index]))</td>"
            for (_, evaluation) in columns {
                let s = evaluation.scores[index]
                grid += "<td>\(image(pixels(evaluation, index)))<br><small>"
                    + String(format: "aes %.2f · align %.0f%%", s.aesthetic, s.alignment * 100) + "</small></td>"
            }
            grid += "</tr>\n"
        }
        var comparison = ""
        if !adapters.isEmpty {
            comparison = """
                <h2>Full, LoRA and token training</h2>
                <p>Each adapter trained from the original weights with the same settings (learning rates as given), \
                measured on the same held-out prompts with the same noise. File: the trained weights as written; \
                trained: the numbers AdamW updated; peak memory: the process's peak resident memory after that run's \
                training (the peak so far, so it includes the runs before it).</p>
                <table><tr><th></th><th>aesthetic</th><th>CLIP score</th><th>alignment</th><th>quality</th>\
                <th>aesthetic change</th><th>alignment change</th><th>file</th><th>trained</th><th>step</th><th>peak memory</th></tr>
                <tr><td>original</td>\(cells(before))<td></td><td></td><td></td><td></td><td></td><td></td></tr>

                """
            for result in adapters {
                comparison += "<tr><td>\(result.adapter.rawValue)</td>\(cells(result.scores))" + String(
                    format: "<td>%+.1f%%</td><td>%+.1f pp</td><td>%.3f MB</td><td>%d</td><td>%.3f s</td><td>%.0f MB</td></tr>\n",
                    (result.scores.aesthetic / before.aesthetic - 1) * 100, (result.scores.alignment - before.alignment) * 100,
                    Double(result.fileBytes) / 1e6, result.trainedParameters, result.stepSeconds, result.peakMemoryMB)
            }
            comparison += "</table>\n"
        }
        let trainedText: String
        switch adapter {
        case .full: trainedText = "The text encoder of the bundled tiny Stable Diffusion was fine-tuned"
        case .lora: trainedText = "LoRA adapters (rank \(settings.lora.rank)) on the text encoder of the bundled tiny Stable Diffusion were trained"
        case .token: trainedText = "A new token, \(escape(settings.token ?? "")), appended to every prompt, was trained (its embedding row only) for the bundled tiny Stable Diffusion"
        }
        let blendText = blends.isEmpty ? "" : " Blends interpolate the two encoders' embeddings: w·fine-tuned + (1−w)·original."
        let rewardText = terms.map { "\($0.name) (γ \($0.gamma))" }.joined(separator: ", ")
        return """
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><title>TextCraftor on ShapesWorld</title>
            <style>
            body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
            table { border-collapse: collapse; margin: 1em 0; } td, th { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
            td.prompt { text-align: left; max-width: 260px; } img { image-rendering: pixelated; }
            .verdict { font-weight: bold; padding: .5em 1em; background: \(targetsMet ? "#e6f4ea" : "#fdecea"); display: inline-block; }
            </style></head><body>
            <h1>TextCraftor on ShapesWorld</h1>
            <p>\(trainedText) with prompt-based TextCraftor for \
            \(settings.maxSteps) steps (\(String(format: "%.0f", trainSeconds)) s) on \(trainPromptCount) training prompts, with \
            \(rewardText)\(clipConstraint ? "" : ", without the CLIP constraint"). Everything below is measured on \
            \(Set(baseline.prompts).count) held-out prompts (shape-colour pairs never seen in training), \(imagesPerPrompt) \
            images each, the same noise before and after. Alignment and quality come from the oracle, which reads the \
            pixels; the aesthetic reward and the CLIP score are what training optimised.</p>
            <p class="verdict">\(escape(verdict()))</p>
            <h2>Scores</h2>
            <table><tr><th></th><th>aesthetic</th><th>CLIP score</th><th>alignment</th><th>quality</th></tr>
            \(rows)</table>
            <p>On \(Set(baseline.prompts).count) of the training prompts (sampled from during training), same settings:</p>
            <table><tr><th></th><th>aesthetic</th><th>CLIP score</th><th>alignment</th><th>quality</th></tr>
            <tr><td>original</td>\(cells(seen.before))</tr><tr><td><b>fine-tuned</b></td>\(cells(seen.after))</tr></table>
            \(comparison)<h2>Rewards during training</h2>
            \(curvesSVG())
            <h2>Images</h2>
            <p>The first image of each prompt, the same noise in every column.\(blendText)</p>
            <table>\(grid)</table>
            <p><small>Bundle: \(escape(bundle)). Sampling: DDIM, \(settings.samplingSteps) steps, guidance \
            \(settings.guidanceScale); gradient window \(settings.gradientWindow); learning rate \
            \(settings.learningRate), batch \(settings.batchSize), seed \(settings.seed).</small></p>
            </body></html>

            """
    }
}

extension String {
    public func leftPad(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
