import Foundation

/// A progress bar on stderr with rate and ETA. On a terminal it redraws one line; otherwise (logs, CI) it prints a
/// line at each tenth of the work, so logs stay short.
final class ProgressBar {
    let label: String
    let total: Int
    let start = Date()
    let interactive = isatty(STDERR_FILENO) == 1
    private var lastReportedTenth = -1

    init(_ label: String, total: Int) {
        self.label = label
        self.total = max(total, 1)
    }

    func update(_ done: Int, note: String = "") {
        let elapsed = Date().timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(done) / elapsed : 0
        let remaining = rate > 0 ? Double(total - done) / rate : 0
        let fraction = Double(done) / Double(total)
        let stats = "\(done)/\(total) \(String(format: "%.2f", rate)) it/s elapsed \(clock(elapsed)) eta \(clock(remaining))"
        if interactive {
            let width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: width - filled)
            FileHandle.standardError.write(Data("\r\(label) \(bar) \(stats) \(note)\u{1B}[K".utf8))
            if done >= total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            let tenth = Int(fraction * 10)
            guard tenth > lastReportedTenth else { return }
            lastReportedTenth = tenth
            FileHandle.standardError.write(Data("\(label) \(Int(fraction * 100))% \(stats) \(note)\n".utf8))
        }
    }

    private func clock(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }
}

/// Writes a warning line to stderr.
func warn(_ message: String) {
    FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
}
