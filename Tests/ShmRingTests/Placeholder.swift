import Testing

@Test func shmRingBuilds() { #expect(Bool(true)) }
