import Foundation
import Testing

@testable import StableDiffusion

/// The heap-based BPE merge against the quadratic loop it replaced (issue 17: one 120,000-character word took 10 s).
@Suite struct BytePairEncodingTests {
    /// A small deterministic generator (SplitMix64), so that failures reproduce.
    struct Seeded: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static func word(_ length: Int, from alphabet: [Character], _ random: inout Seeded) -> String {
        String((0..<length).map { _ in alphabet.randomElement(using: &random)! })
    }

    @Test func agreesWithTheQuadraticLoopOnAdversarialMerges() {
        // Random merge lists over a three-letter alphabet, including pairs ranked before the merges that make their
        // parts and repeated pairs, where merging one occurrence before the others would change the result.
        var random = Seeded(state: 17)
        let pieces = ["a", "b", "c", "ab", "ba", "aa", "bc", "abc", "aab", "a</w>", "b</w>", "c</w>", "ab</w>", "ba</w>"]
        var compared = 0
        for _ in 0..<40 {
            var merges: [(String, String)] = [("a", "b"), ("ab", "a"), ("b", "a"), ("a", "a")]
            for _ in 0..<30 {
                let left = pieces.filter { !$0.hasSuffix("</w>") }.randomElement(using: &random)!
                merges.append((left, pieces.randomElement(using: &random)!))
            }
            merges.shuffle(using: &random)
            var vocabulary: [String: Int32] = [:]
            for (left, right) in merges { for token in [left, right, left + right] where vocabulary[token] == nil {
                vocabulary[token] = Int32(vocabulary.count)
            } }
            let bpe = BytePairEncoding(vocabulary: vocabulary, merges: merges, unknownId: -1)
            for _ in 0..<50 {
                let word = Array(Self.word(Int.random(in: 1...40, using: &random), from: ["a", "b", "c"], &random).utf8)
                #expect(bpe.encode(word: word) == bpe.referenceEncode(word: word), "\(String(decoding: word, as: UTF8.self)) \(merges)")
                compared += 1
            }
            // Runs of one letter: every occurrence of "a a" merges in one pass, left to right, without overlaps.
            for length in 1...9 {
                let word = Array(String(repeating: "a", count: length).utf8)
                #expect(bpe.encode(word: word) == bpe.referenceEncode(word: word))
            }
        }
        #expect(compared == 2000)
    }

    @Test func agreesWithTheQuadraticLoopOnCLIPsMerges() {
        let bpe = Tokenizers.bundledSD1.bpe
        var random = Seeded(state: 5)
        let alphabets: [[Character]] = [
            Array("abcdefghijklmnopqrstuvwxyz"), Array("etaoinshr"), Array("0123456789"), Array("ab"),
            Array("éàüßøñçあいうアイウ中文字😀"), Array("!?.,-_#@"),
        ]
        for alphabet in alphabets {
            for _ in 0..<60 {
                let word = Array(Self.word(Int.random(in: 1...300, using: &random), from: alphabet, &random).utf8)
                #expect(bpe.encode(word: word) == bpe.referenceEncode(word: word), "\(String(decoding: word, as: UTF8.self))")
            }
        }
        let long = Array(Self.word(2_000, from: alphabets[0], &random).utf8)
        #expect(bpe.encode(word: long) == bpe.referenceEncode(word: long))
    }

    @Test func aVeryLongWordGivesTheSameFirstIds() {
        // 120,000 letters in one word: quadratic before (10 s), now n log n. Its first 77 model inputs are those the
        // quadratic loop gives for its first 2,000 letters.
        let tokenizer = Tokenizers.bundledSD1
        var random = Seeded(state: 120_000)
        let word = Self.word(120_000, from: Array("abcdefghijklmnopqrstuvwxyz"), &random)
        let (ids, truncated) = tokenizer.tokenize([word])
        let prefix = tokenizer.bpe.referenceEncode(word: Array(word.prefix(2_000).utf8))
        #expect(ids[0] == [tokenizer.bosTokenId] + prefix[..<75] + [tokenizer.eosTokenId])
        #expect(ids[0].count == 77)
        #expect(truncated[0] != nil)
        // The whole word's ids spell it back.
        #expect(tokenizer.decode(tokenizer.encode(word)) == word)
    }

    @Test func longWordsAreNotCached() {
        // Each cached word kept its bytes and ids: 200,000 long words could hold any amount of memory.
        let bpe = BytePairEncoding(vocabulary: ["a": 0, "a</w>": 1, "aa": 2], merges: [("a", "a")], unknownId: 1)
        let long = [UInt8](repeating: UInt8(ascii: "a"), count: WordCache.longestWord + 1)
        #expect(bpe.encode(word: long) == Array(repeating: 2, count: WordCache.longestWord / 2) + [1])
        #expect(bpe.cache.count == 0)
        let short = [UInt8](repeating: UInt8(ascii: "a"), count: WordCache.longestWord)
        #expect(bpe.encode(word: short) == Array(repeating: 2, count: WordCache.longestWord / 2 - 1) + [0, 1])
        #expect(bpe.cache.count == 1)
    }
}
