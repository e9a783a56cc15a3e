import Testing
import Torch

@Suite struct ExcerptTests {
    @Test func shortTextIsKeptAndLongTextCut() {
        #expect(excerpt("text_model.embeddings") == "text_model.embeddings")
        #expect(excerpt(String(repeating: "a", count: 100), limit: 10) == "aaaaaaaaaa…(90 more characters)")
    }

    @Test func controlCharactersAndEscapeCodesAreEscaped() {
        #expect(excerpt("a\u{1B}[31mred\nb\t\u{0}") == "a\\u{1b}[31mred\\nb\\t\\u{0}")
        #expect(excerpt(String(decoding: [0x66, 0xFF, 0x67] as [UInt8], as: UTF8.self)) == "f\\u{fffd}g")
    }

    @Test func longShapesAreSummarised() {
        #expect(excerpt(shape: [2, 3]) == "[2, 3]")
        #expect(excerpt(shape: Array(repeating: 1, count: 1000), limit: 3) == "[1, 1, 1, …] (1000 dimensions)")
    }
}
