import Testing

@Test func workerBuilds() { #expect(Bool(true)) }
