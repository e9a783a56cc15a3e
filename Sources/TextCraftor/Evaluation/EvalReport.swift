import Foundation

/// `report.html`: one self-contained page (no file beside it is read) with the tables, a bar chart per reward with
/// its 95% intervals, and a grid of images, rows = prompts, columns = variants.
public struct EvalReport {
    public let summary: EvalSummary
    public let title: String
    /// Lines describing the run (model, prompts, sampler), shown under the title.
    public let settings: [String]
    /// The grid's rows: a prompt and, per variant in summary order, the PNG bytes of its first image.
    public let grid: [(prompt: String, images: [Data])]

    public init(summary: EvalSummary, title: String, settings: [String], grid: [(prompt: String, images: [Data])]) {
        self.summary = summary
        self.title = title
        self.settings = settings
        self.grid = grid
    }

    /// Text for HTML: & < > " escaped.
    public static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// A horizontal bar per variant (its mean) with a whisker for the interval; the axis spans the intervals.
    func barChart(_ reward: String) -> String {
        let rows = summary.variants.map { ($0.name, $0.rewards[reward]!.overall) }
        let lows = rows.map { $0.1.lower ?? $0.1.mean }, highs = rows.map { $0.1.upper ?? $0.1.mean }
        var low = min(lows.min()!, 0), high = max(highs.max()!, 0)
        if high - low < 1e-12 { high = low + 1 }
        let pad = (high - low) * 0.05
        low = low < 0 ? low - pad : low
        high += pad
        let label = 150.0, width = 460.0, rowHeight = 26.0, top = 24.0
        let height = top + rowHeight * Double(rows.count) + 24
        func x(_ v: Double) -> Double { label + (v - low) / (high - low) * width }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(label + width + 20))\" height=\"\(Int(height))\" "
            + "font-family=\"sans-serif\" font-size=\"12\">"
        svg += "<text x=\"\(label)\" y=\"15\" font-weight=\"bold\">\(Self.escape(reward)) (mean, 95% interval)</text>"
        for (i, (name, m)) in rows.enumerated() {
            let y = top + Double(i) * rowHeight
            let x0 = x(max(low, 0)), x1 = x(m.mean)
            svg += "<text x=\"\(label - 6)\" y=\"\(y + 16)\" text-anchor=\"end\">\(Self.escape(name))</text>"
            svg += String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"18\" fill=\"%@\"/>",
                          min(x0, x1), y + 3, abs(x1 - x0), i == 0 ? "#9aa5b1" : "#4c78a8")
            if let lo = m.lower, let hi = m.upper {
                svg += String(format: "<path d=\"M%.1f %.1fH%.1fM%.1f %.1fV%.1fM%.1f %.1fV%.1f\" stroke=\"#222\" fill=\"none\"/>",
                              x(lo), y + 12, x(hi), x(lo), y + 7, y + 17, x(hi), y + 7, y + 17)
            }
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#222\">%.4f</text>", x(m.upper ?? m.mean) + 6, y + 16, m.mean)
        }
        let axisY = top + rowHeight * Double(rows.count) + 4
        svg += String(format: "<path d=\"M%.1f %.1fH%.1f\" stroke=\"#888\"/>", label, axisY, label + width)
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">%.3g</text>", label, axisY + 14, low)
        svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#555\">%.3g</text>", label + width, axisY + 14, high)
        return svg + "</svg>"
    }

    /// The markdown tables as HTML tables.
    func tables() -> String {
        var html = ""
        for block in summary.markdown().components(separatedBy: "\n\n") where !block.isEmpty {
            if block.hasPrefix("## ") {
                html += "<h2>\(Self.escape(String(block.dropFirst(3))))</h2>\n"
                continue
            }
            let lines = block.split(separator: "\n").map { line in
                line.trimmingCharacters(in: CharacterSet(charactersIn: "| ")).components(separatedBy: " | ")
            }
            html += "<table><tr>" + lines[0].map { "<th>\(Self.escape($0))</th>" }.joined() + "</tr>"
            for row in lines.dropFirst(2) { html += "<tr>" + row.map { "<td>\(Self.escape($0))</td>" }.joined() + "</tr>" }
            html += "</table>\n"
        }
        return html
    }

    public func html() -> String {
        var html = """
            <!DOCTYPE html>
            <html><head><meta charset="utf-8"><title>\(Self.escape(title))</title>
            <style>
            body { font-family: sans-serif; margin: 24px; color: #222; }
            table { border-collapse: collapse; margin: 8px 0 16px; }
            th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
            th:first-child, td:first-child { text-align: left; }
            .grid td { text-align: center; vertical-align: top; }
            .grid img { width: 128px; height: 128px; image-rendering: pixelated; }
            .prompt { max-width: 260px; text-align: left !important; font-size: 13px; }
            .settings { color: #555; font-size: 13px; }
            </style></head><body>
            <h1>\(Self.escape(title))</h1>

            """
        html += "<p class=\"settings\">" + settings.map(Self.escape).joined(separator: "<br>") + "</p>\n"
        html += tables()
        html += "<h2>Rewards by variant</h2>\n" + summary.rewards.map { "<div>\(barChart($0))</div>" }.joined(separator: "\n")
        if !grid.isEmpty {
            html += "\n<h2>Images (the first of each prompt; the same seed in every column)</h2>\n<table class=\"grid\"><tr><th>prompt</th>"
            html += summary.variants.map { "<th>\(Self.escape($0.name))</th>" }.joined() + "</tr>\n"
            for row in grid {
                html += "<tr><td class=\"prompt\">\(Self.escape(row.prompt))</td>"
                html += row.images.map { "<td><img src=\"data:image/png;base64,\($0.base64EncodedString())\"></td>" }.joined()
                html += "</tr>\n"
            }
            html += "</table>\n"
        }
        return html + "</body></html>\n"
    }
}
