import Foundation
import Testing

@Suite struct ShapesCLITests {
    /// Width and height from a PNG's IHDR chunk.
    func pngSize(_ url: URL) throws -> (Int, Int) {
        let data = try Data(contentsOf: url)
        #expect(data.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
        func be32(_ at: Int) -> Int { data[at..<at + 4].reduce(0) { $0 << 8 | Int($1) } }
        return (be32(16), be32(20))
    }

    @Test func renderWritesImagesMetadataAndAGrid() throws {
        let out = temporaryOutput(), again = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: again) }
        let run = try textcraftor(["shapes", "render", "--out", out.path, "--count", "10", "--seed", "5"])
        #expect(run.status == 0, "\(run.err)")
        let files = try FileManager.default.contentsOfDirectory(atPath: out.path).sorted()
        #expect(files == (0..<10).map { String(format: "%04d.png", $0) } + ["grid.png", "metadata.jsonl"])
        #expect(try pngSize(out.appendingPathComponent("0003.png")) == (32, 32))
        #expect(try pngSize(out.appendingPathComponent("grid.png")) == (8 * 128 + 9 * 2, 2 * 128 + 3 * 2))
        let rows = try String(contentsOf: out.appendingPathComponent("metadata.jsonl"), encoding: .utf8)
            .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(rows.count == 10)
        for (i, row) in rows.enumerated() {
            #expect(row["file_name"] as? String == String(format: "%04d.png", i))
            let text = try #require(row["text"] as? String)
            for key in ["colour", "background"] {  // the other attributes may be said with synonyms ("big", "disc")
                #expect(text.contains(row[key] as! String), "\(text) lacks its \(key)")
            }
            #expect(row["split"] as? String == "train")
            #expect((row["quality"] as! Double) >= 8)
        }
        // The same seed gives the same bytes.
        #expect(try textcraftor(["shapes", "render", "--out", again.path, "--count", "10", "--seed", "5"]).status == 0)
        for file in files {
            #expect(try Data(contentsOf: out.appendingPathComponent(file)) == Data(contentsOf: again.appendingPathComponent(file)))
        }
    }

    @Test func heldOutAndDegradedScenes() throws {
        let out = temporaryOutput()
        defer { try? FileManager.default.removeItem(at: out) }
        let run = try textcraftor(["shapes", "render", "--out", out.path, "--count", "30", "--split", "held-out", "--degrade"])
        #expect(run.status == 0, "\(run.err)")
        let rows = try String(contentsOf: out.appendingPathComponent("metadata.jsonl"), encoding: .utf8)
            .split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        let heldOut: Set<String> = ["circle magenta", "square cyan", "triangle yellow"]
        for row in rows {
            #expect(row["split"] as? String == "held-out")
            #expect(heldOut.contains("\(row["shape"]!) \(row["colour"]!)"))
            #expect(row["degradation"] is String && (row["strength"] as! Double) >= 0.2)
        }
        #expect(rows.map { $0["quality"] as! Double }.min()! < 8)
    }

    @Test func badSplitFailsInOneLine() throws {
        let out = temporaryOutput()
        let run = try textcraftor(["shapes", "render", "--out", out.path, "--split", "test"])
        #expect(run.status == 1)
        #expect(run.err == "Error: --split test: expected train or held-out\n")
        #expect(!FileManager.default.fileExists(atPath: out.path))
    }
}
