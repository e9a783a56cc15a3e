import Testing

@testable import TextCraftor

@Suite struct TextCraftorErrorTests {
    @Test func messagesNameTheStep() {
        #expect(TextCraftorError.nonFinite(step: 12, what: "loss").description
            == "step 12: the loss is not finite; stopped, the last good checkpoint is kept")
    }
}
