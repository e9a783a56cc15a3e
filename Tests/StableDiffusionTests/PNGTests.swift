import Foundation
import Testing
import Torch

@testable import StableDiffusion

@Suite struct PNGTests {
    @Test func checksumsMatchTheirStandards() {
        #expect(PNG.crc32(Data("IEND".utf8)) == 0xAE42_6082)  // the CRC every PNG ends with
        #expect(PNG.adler32(Data("Wikipedia".utf8)) == 0x11E6_0398)  // the worked example of Adler-32
        #expect(PNG.adler32(Data(repeating: 255, count: 100_000)) == 0x149A_302C)  // zlib.adler32; spans several rounds
    }

    /// Decodes what we wrote (signature, chunk CRCs, stored blocks, filter bytes) and finds the same pixels.
    @Test func storedImageReadsBack() throws {
        let (width, height) = (300, 250)  // 300*3+1 bytes a row: the data spans two stored blocks
        let pixels = (0..<(width * height * 3)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let png = PNG.encode(pixels: pixels, width: width, height: height)
        #expect(png.prefix(8) == Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]))
        var offset = 8, chunks: [(String, Data)] = []
        func u32(_ at: Int) -> Int { png[at..<(at + 4)].reduce(0) { $0 << 8 | Int($1) } }
        while offset < png.count {
            let length = u32(offset)
            let type = String(decoding: png[(offset + 4)..<(offset + 8)], as: UTF8.self)
            let body = png[(offset + 8)..<(offset + 8 + length)]
            #expect(UInt32(u32(offset + 8 + length)) == PNG.crc32(png[(offset + 4)..<(offset + 8 + length)]), "CRC of \(type)")
            chunks.append((type, Data(body)))
            offset += 12 + length
        }
        #expect(chunks.map(\.0) == ["IHDR", "IDAT", "IEND"])
        #expect(chunks[0].1 == Data([0, 0, 1, 44, 0, 0, 0, 250, 8, 2, 0, 0, 0]))
        var zlib = chunks[1].1, raw = Data(), at = 2
        while true {
            let final = zlib[at] & 1
            let length = Int(zlib[at + 1]) | Int(zlib[at + 2]) << 8
            #expect(Int(zlib[at + 3]) | Int(zlib[at + 4]) << 8 == ~length & 0xFFFF)
            raw.append(zlib[(at + 5)..<(at + 5 + length)])
            at += 5 + length
            if final == 1 { break }
        }
        let adler = zlib[at..<(at + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        #expect(adler == PNG.adler32(raw))
        zlib = Data()
        var decoded: [UInt8] = []
        let stride = width * 3 + 1
        for row in 0..<height {
            let start: Int = row * stride
            #expect(raw[start] == 0)
            decoded.append(contentsOf: raw[(start + 1)..<(start + stride)])
        }
        #expect(decoded == pixels)
    }

    @Test func writesATensorAtomically() throws {
        let folder = try temporaryFolder("png")
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = Tensor((0..<48).map { UInt8($0 * 5) }, shape: [4, 4, 3])
        let url = folder.appendingPathComponent("0000.png")
        try PNG.write(image, to: url)
        let data = try Data(contentsOf: url)
        #expect(data == PNG.encode(pixels: image.toArray(UInt8.self), width: 4, height: 4))
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder.path) == ["0000.png"])
    }
}
