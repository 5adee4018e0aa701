import Testing

@Test func sysKitBuilds() { #expect(Bool(true)) }
