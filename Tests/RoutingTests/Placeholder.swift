import Testing

@Test func routingBuilds() { #expect(Bool(true)) }
