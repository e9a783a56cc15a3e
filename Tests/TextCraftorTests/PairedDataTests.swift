import Foundation
import Testing

@testable import TextCraftor

@Suite final class PairedDataTests: TemporaryFolderSuite {
    @discardableResult func image(_ name: String) throws -> URL { try write("not really a png", to: name, in: folder) }

    @Test func jsonLinesInAnImageFolder() throws {
        let first = try image("0001.png"), second = try image("sub/0002.jpg")
        try write("""
            {"file_name": "0001.png", "text": "a red circle", "score": 5}

            {"file_name": "sub/0002.jpg", "caption": "a blue square, \\"small\\""}\r
            """, to: "metadata.jsonl", in: folder)
        let data = try PairedData(contentsOf: folder)
        #expect(data.metadata.lastPathComponent == "metadata.jsonl")
        #expect(data.pairs == [
            ImageCaption(image: first.standardizedFileURL, caption: "a red circle"),
            ImageCaption(image: second.standardizedFileURL, caption: "a blue square, \"small\""),
        ])
        // The metadata file itself names the same data.
        #expect(try PairedData(contentsOf: folder.appendingPathComponent("metadata.jsonl")).pairs == data.pairs)
    }

    @Test func csvWithTextOrCaptionColumns() throws {
        let a = try image("a.png"), b = try image("b.png")
        try write("file_name,caption\r\na.png,\"one, two\"\r\nb.png,\"three\nfour\"\r\n", to: "metadata.csv", in: folder)
        #expect(try PairedData(contentsOf: folder).pairs == [
            ImageCaption(image: a.standardizedFileURL, caption: "one, two"),
            ImageCaption(image: b.standardizedFileURL, caption: "three\nfour"),
        ])
        let other = try write("text,file_name\nfirst,a.png\n", to: "pairs.csv", in: folder)
        #expect(try PairedData(contentsOf: other).pairs == [ImageCaption(image: a.standardizedFileURL, caption: "first")])
    }

    @Test func absoluteFileNamesAreKept() throws {
        let elsewhere = try temporaryFolder()
        defer { try? FileManager.default.removeItem(at: elsewhere) }
        let outside = try write("x", to: "far.png", in: elsewhere)
        try write("{\"file_name\": \"\(outside.path)\", \"text\": \"far\"}\n", to: "metadata.jsonl", in: folder)
        #expect(try PairedData(contentsOf: folder).pairs == [ImageCaption(image: outside.standardizedFileURL, caption: "far")])
    }

    @Test func batchesResumeLikePrompts() throws {
        for i in 0..<6 { try image("\(i).png") }
        try write((0..<6).map { "{\"file_name\": \"\($0).png\", \"text\": \"caption \($0)\"}" }.joined(separator: "\n"),
                  to: "metadata.jsonl", in: folder)
        let data = try PairedData(contentsOf: folder)
        var sampler = try BatchSampler(data.pairs, batchSize: 4, shuffle: true, seed: 11)
        _ = sampler.next()
        let cursor = sampler.cursor
        let expected = (0..<5).map { _ in sampler.next().map(\.caption) }
        var resumed = try BatchSampler(data.pairs, batchSize: 4, shuffle: true, resumingFrom: cursor)
        #expect((0..<5).map { _ in resumed.next().map(\.caption) } == expected)
        var ordered = try BatchSampler(data.pairs, batchSize: 4, shuffle: false, seed: 11)
        #expect(ordered.next().map(\.caption) == ["caption 0", "caption 1", "caption 2", "caption 3"])
    }

    @Test func missingImagesNameTheFirstOneAndItsLine() throws {
        try image("a.png")
        let jsonl = try write("""
            {"file_name": "a.png", "text": "ok"}
            {"file_name": "gone.png", "text": "missing"}
            {"file_name": "also-gone.png", "text": "missing too"}
            """, to: "metadata.jsonl", in: folder)
        #expect(message { try PairedData(contentsOf: folder) } == "\(jsonl.path): line 2: no image file \"gone.png\"")

        let csv = try write("file_name,text\na.png,ok\n\"sub\",\"multi\nline\"\ngone.png,x\n", to: "other.csv", in: folder)
        try FileManager.default.createDirectory(at: folder.appendingPathComponent("sub"), withIntermediateDirectories: true)
        #expect(message { try PairedData(contentsOf: csv) } == "\(csv.path): line 3: \"sub\" is a folder, not an image")
        let csvGone = try write("file_name,text\na.png,\"multi\nline\"\ngone.png,x\n", to: "gone.csv", in: folder)
        #expect(message { try PairedData(contentsOf: csvGone) } == "\(csvGone.path): line 4: no image file \"gone.png\"")
    }

    @Test func metadataErrors() throws {
        let missing = folder.appendingPathComponent("nowhere")
        #expect(message { try PairedData(contentsOf: missing) } == "\(missing.path): no such file or folder")
        #expect(message { try PairedData(contentsOf: folder) } == "\(folder.path): no metadata.jsonl or metadata.csv")
        let jsonl = try write("", to: "metadata.jsonl", in: folder)
        #expect(message { try PairedData(contentsOf: folder) } == "\(jsonl.path): no image-caption pairs")
        try write("file_name,text\n", to: "metadata.csv", in: folder)
        #expect(message { try PairedData(contentsOf: folder) } == "\(folder.path): both metadata.jsonl and metadata.csv; keep one")
        let text = try write("a.png\tcaption\n", to: "pairs.tsv", in: folder)
        #expect(message { try PairedData(contentsOf: text) } == "\(text.path): expected a folder, a .jsonl or a .csv file")
    }

    @Test func jsonLinesErrors() throws {
        try image("a.png")
        func check(_ lines: String, _ expected: String) throws {
            let url = try write(lines, to: "m.jsonl", in: folder)
            #expect(message { try PairedData(contentsOf: url) } == "\(url.path): \(expected)")
        }
        try check("{\"file_name\": \"a.png\", \"text\": \"ok\"}\n[\"a.png\", \"x\"]",
                  "line 2: expected an object with \"file_name\" and \"text\", found a list")
        try check("{\"text\": \"x\"}", "line 1: no \"file_name\" key")
        try check("{\"file_name\": 3, \"text\": \"x\"}", "line 1: \"file_name\": expected a string, found a number")
        try check("{\"file_name\": \"a.png\"}", "line 1: no \"text\" or \"caption\" key")
        try check("{\"file_name\": \"a.png\", \"text\": [\"x\"]}", "line 1: \"text\": expected a string, found a list")
        try check("{\"file_name\": \"\", \"text\": \"x\"}", "line 1: empty file_name")
        let broken = try write("\n{\"file_name\": \"a.png\", \"text\": }\n", to: "b.jsonl", in: folder)
        let brokenMessage = try #require(message { try PairedData(contentsOf: broken) })
        #expect(brokenMessage.hasPrefix("\(broken.path): line 2: malformed JSON"))
    }

    @Test func csvErrors() throws {
        let noFile = try write("image,text\na.png,x\n", to: "a.csv", in: folder)
        #expect(message { try PairedData(contentsOf: noFile) } == "\(noFile.path): no column \"file_name\" (its columns: image, text)")
        let noText = try write("file_name,label\na.png,x\n", to: "b.csv", in: folder)
        #expect(message { try PairedData(contentsOf: noText) }
            == "\(noText.path): no column \"text\" or \"caption\" (its columns: file_name, label)")
    }
}
