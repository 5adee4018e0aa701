import Testing

@Test func wireBuilds() { #expect(Bool(true)) }
