import Foundation
import Rewards
import StableDiffusion
import Testing
import Torch

@testable import TextCraftor

/// The event-file writer and reader: CRC-32C, TFRecord framing, the Event protobuf, and a resumed run's truncation.
@Suite struct TensorBoardTests {
    /// Published CRC-32C check values (RFC 3720 B.4 for the 32-byte patterns; "123456789" is the catalogue's check).
    @Test(arguments: [
        ("123456789", UInt32(0xE306_9283)),
        ("", UInt32(0)),
        ("a", UInt32(0xC1D0_4330)),
    ])
    func crc32cOfText(text: String, crc: UInt32) {
        #expect(CRC32C.checksum(Data(text.utf8)) == crc)
    }

    @Test func crc32cOfRFC3720Vectors() {
        #expect(CRC32C.checksum(Data(repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum(Data(repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum(Data((0..<32).map { UInt8($0) })) == 0x46DD_794E)
        #expect(CRC32C.checksum(Data((0..<32).map { UInt8(31 - $0) })) == 0x113F_DB5C)
    }

    /// The mask is TensorFlow's: rotate right 15, add 0xa282ead8 (wrapping). The expected values are TensorBoard's
    /// (`tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`, tensorboard 2.21.0).
    @Test func maskedCRC() {
        #expect(CRC32C.masked(0) == 0xA282_EAD8)
        #expect(CRC32C.masked(0x0000_8000) == 0xA282_EAD9)
        #expect(CRC32C.masked(CRC32C.checksum(Data("123456789".utf8))) == 0xC78A_B0E5)
        #expect(CRC32C.masked(CRC32C.checksum(Data("hello".utf8))) == 0x191C_1FBB)
        #expect(CRC32C.masked(CRC32C.checksum(Data([5, 0, 0, 0, 0, 0, 0, 0]))) == 0x3E04_B2EA)
    }

    /// A record's bytes, field by field: little-endian length, its masked CRC, the data, the data's masked CRC.
    @Test func recordFraming() throws {
        let payload = Data("hello".utf8)
        let framed = TFRecord.frame(payload)
        #expect(framed.count == 8 + 4 + 5 + 4)
        #expect(Array(framed[0..<8]) == [5, 0, 0, 0, 0, 0, 0, 0])
        func word(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(framed[at + $1]) << (8 * UInt32($1)) } }
        #expect(word(8) == CRC32C.masked(CRC32C.checksum(Data([5, 0, 0, 0, 0, 0, 0, 0]))))
        #expect(framed[12..<17] == payload)
        #expect(word(17) == CRC32C.masked(CRC32C.checksum(payload)))

        let two = framed + TFRecord.frame(Data())
        #expect(try TFRecord.records(in: two, source: "x").records == [payload, Data()])
    }

    @Test func damagedRecordsAreNamed() throws {
        var framed = TFRecord.frame(Data("hello".utf8))
        framed[13] ^= 1
        #expect(throws: TextCraftorError.invalidArgument("f: the data of the record at byte 0 fails its CRC-32C")) {
            try TFRecord.records(in: framed, source: "f")
        }
        framed = TFRecord.frame(Data("hello".utf8))
        framed[0] = 6
        #expect(throws: TextCraftorError.invalidArgument("f: the length of the record at byte 0 fails its CRC-32C")) {
            try TFRecord.records(in: framed, source: "f")
        }
        let cut = TFRecord.frame(Data("ok".utf8)) + TFRecord.frame(Data("hello".utf8)).prefix(15)
        #expect(throws: TextCraftorError.invalidArgument("f: the record at byte 18 is cut short (15 bytes left)")) {
            try TFRecord.records(in: cut, source: "f")
        }
        let dropped = try TFRecord.records(in: cut, source: "f", truncatedTail: .drop)
        #expect(dropped.records == [Data("ok".utf8)] && dropped.validLength == 18)
    }

    /// The file-version event, byte for byte as protobuf encodes it (field 1 fixed64, field 3 length-delimited).
    @Test func fileVersionEventBytes() throws {
        let event = TensorBoardEvent(wallTime: 1.5, fileVersion: "brain.Event:2")
        let expected = Data([0x09]) + TFRecord.littleEndian((1.5).bitPattern) + Data([0x1A, 13]) + Data("brain.Event:2".utf8)
        #expect(event.encoded() == expected)
        #expect(try TensorBoardEvent(decoding: expected) == event)
    }

    /// A scalar value: step 300 as a two-byte varint, simple_value as a fixed32 float.
    @Test func scalarEventBytes() throws {
        let event = TensorBoardEvent(wallTime: 0, step: 300, values: [TensorBoardValue(tag: "loss", scalar: 0.5)])
        let value = Data([0x0A, 4]) + Data("loss".utf8) + Data([0x15]) + TFRecord.littleEndian(Float(0.5).bitPattern)
        let summary = Data([0x0A, UInt8(value.count)]) + value
        let expected = Data([0x09]) + Data(repeating: 0, count: 8) + Data([0x10, 0xAC, 0x02]) + Data([0x2A, UInt8(summary.count)]) + summary
        #expect(event.encoded() == expected)
        #expect(try TensorBoardEvent(decoding: expected) == event)
    }

    @Test func imageEventRoundTrips() throws {
        let png = PNG.encode(pixels: [UInt8](repeating: 200, count: 2 * 3 * 3), width: 3, height: 2)
        let event = TensorBoardEvent(wallTime: 12.25, step: 7, values: [
            TensorBoardValue(tag: "a", scalar: -3), TensorBoardValue(tag: "images", image: TensorBoardImage(height: 2, width: 3, encoded: png)),
        ])
        let decoded = try TensorBoardEvent(decoding: event.encoded())
        #expect(decoded == event)
        #expect(decoded.values[1].image?.colorspace == 3)
    }

    @Test func malformedProtobufIsAnError() {
        #expect(throws: (any Error).self) { try TensorBoardEvent(decoding: Data([0x2A, 50, 1])) }
        #expect(throws: (any Error).self) { try TensorBoardEvent(decoding: Data([0x0F])) }
    }

    /// Writer then reader: the version event first, then each step's values; a second writer in the same second
    /// gets its own file, read after the first.
    @Test func writerAndReader() throws {
        let folder = temporaryRun()
        defer { try? FileManager.default.removeItem(at: folder) }
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let first = try TensorBoardWriter(folder: folder, now: now)
        #expect(first.url.lastPathComponent.hasPrefix("events.out.tfevents.1700000000."))
        try first.write(step: 1, values: [TensorBoardValue(tag: "loss", scalar: 1)], now: now)
        try first.write(step: 2, values: [TensorBoardValue(tag: "loss", scalar: 2)], now: now)
        let second = try TensorBoardWriter(folder: folder, now: now)
        #expect(second.url.lastPathComponent == first.url.lastPathComponent + ".1")
        try second.write(step: 3, values: [TensorBoardValue(tag: "loss", scalar: 3)], now: now)

        let events = try TensorBoardLog.readFolder(folder)
        #expect(events.map(\.fileVersion) == ["brain.Event:2", nil, nil, "brain.Event:2", nil])
        #expect(events.map(\.step) == [0, 1, 2, 0, 3])
        #expect(events.compactMap { $0.values.first?.scalar } == [1, 2, 3])
    }

    /// A resumed run keeps the events up to its checkpoint and drops a record cut short by a crash.
    @Test func truncateKeepsStepsUpToTheCheckpoint() throws {
        let folder = temporaryRun()
        defer { try? FileManager.default.removeItem(at: folder) }
        let writer = try TensorBoardWriter(folder: folder)
        for step in 1...5 { try writer.write(step: step, values: [TensorBoardValue(tag: "loss", scalar: Double(step))]) }
        let handle = try FileHandle(forWritingTo: writer.url)
        try handle.seekToEnd()
        try handle.write(contentsOf: TFRecord.frame(Data(repeating: 1, count: 40)).prefix(30))
        try handle.close()
        #expect(throws: (any Error).self) { try TensorBoardLog.read(writer.url) }

        try TensorBoardLog.truncate(folder, after: 3)
        let events = try TensorBoardLog.read(writer.url)
        #expect(events.first?.fileVersion == "brain.Event:2")
        #expect(events.dropFirst().map(\.step) == [1, 2, 3])
    }

    /// The grid: ceil(√B) columns, 2 black pixels between cells, each image's pixels in its cell.
    @Test func imageGrid() throws {
        let images = Tensor.stack([0.0, 0.5, 1.0].map { Tensor.full([3, 4, 5], $0) })
        let grid = TrainingImages.grid(images)
        #expect((grid.width, grid.height) == (2 * 5 + 2, 2 * 4 + 2))
        let file = temporaryRun().appendingPathExtension("png")
        defer { try? FileManager.default.removeItem(at: file) }
        try grid.encoded.write(to: file)
        let decoded = try ImageIO.read(file)  // libpng: the bytes are a valid PNG
        #expect(decoded.shape == [3, 10, 12])
        let pixels = decoded.toArray(Float.self)
        func at(_ c: Int, _ y: Int, _ x: Int) -> Float { pixels[(c * 10 + y) * 12 + x] }
        #expect(at(0, 0, 0) == 0 && at(1, 0, 7) == Float(128) / 255 && at(2, 6, 0) == 1 && at(0, 0, 5) == 0 && at(0, 9, 11) == 0)
    }

    /// Large images are scaled down to cells of at most 512 pixels.
    @Test func largeImagesAreScaledDown() {
        let grid = TrainingImages.grid(Tensor.full([1, 3, 1024, 768], 0.25))
        #expect((grid.width, grid.height) == (384, 512))
    }

    /// metrics.jsonl's numbers become scalars; `step` and flags do not.
    @Test func scalarsOfAMetricsLine() {
        let values = Trainer.tensorBoardScalars(["step": 3, "loss": -1.5, "aesthetic": 5.25, "skipped": true, "count": 2])
        #expect(values.map(\.tag) == ["aesthetic", "count", "loss"])
        #expect(values.map(\.scalar) == [5.25, 2, -1.5])
    }
}
