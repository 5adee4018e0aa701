import Testing

@Test func engineBuilds() { #expect(Bool(true)) }
