import Testing

@Test func frontBuilds() { #expect(Bool(true)) }
