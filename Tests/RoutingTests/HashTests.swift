import Testing
@testable import Routing

@Suite struct HashTests {
    /// The hash is part of the routing contract (changing it re-homes every session across restarts): these
    /// values pin it. If this fails the hash changed — that is a breaking change, not a test to update lightly.
    @Test func pinnedValues() {
        #expect(RouteHash.string("") == RouteHash.bytes([UInt8]()))
        #expect(RouteHash.string("") == 16927039725350548919)
        #expect(RouteHash.string("w0") == 3111985445077257695)
        #expect(RouteHash.string("session-0123456789abcdef") == 14021876788940297952)
        #expect(RouteHash.mix64(1) == 6238072747940578789)
        // Independent check of the finalizer: the first output of SplitMix64 seeded with 0.
        #expect(RouteHash.mix64(0x9e37_79b9_7f4a_7c15) == 0xe220_a839_7b1d_cdaf)
    }

    @Test func everyLengthIsDistinctAndInBounds() {
        // Hash prefixes of one buffer, lengths 0...64: all distinct (tail handling reads exactly `count`).
        let bytes = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        var seen = Set<UInt64>()
        for n in 0...64 {
            let h = Array(bytes[0..<n]).withUnsafeBytes { RouteHash.bytes($0) }
            seen.insert(h)
        }
        #expect(seen.count == 65)
        // Trailing zero bytes change the hash (the length is mixed in).
        #expect(RouteHash.bytes([0]) != RouteHash.bytes([0, 0]))
        #expect(RouteHash.bytes([UInt8]()) != RouteHash.bytes([0]))
    }

    @Test func bytesBeyondCountAreNotRead() {
        // Same 5-byte prefix, different garbage after it: the hash of the 5-byte slice must not change.
        let a: [UInt8] = [1, 2, 3, 4, 5, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
        let b: [UInt8] = [1, 2, 3, 4, 5, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
        for n in [5] {
            let ha = a.withUnsafeBytes { RouteHash.bytes(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            let hb = b.withUnsafeBytes { RouteHash.bytes(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            #expect(ha == hb)
        }
        for n in [13, 17, 19] {
            let c = a.map { $0 }
            var d = c
            d[n] = 0xEE
            let hc = c.withUnsafeBytes { RouteHash.bytes(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            let hd = d.withUnsafeBytes { RouteHash.bytes(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            #expect(hc == hd)
        }
    }

    @Test func avalanche() {
        // Flipping any one input bit of an 8-byte key flips about half of the output bits (mean over keys).
        var rng = SplitMix64(seed: 42)
        var total = 0
        var trials = 0
        for _ in 0..<200 {
            var key = (0..<8).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let h0 = RouteHash.bytes(key)
            for bit in 0..<64 {
                key[bit / 8] ^= UInt8(1 << (bit % 8))
                total += (RouteHash.bytes(key) ^ h0).nonzeroBitCount
                key[bit / 8] ^= UInt8(1 << (bit % 8))
                trials += 1
            }
        }
        let mean = Double(total) / Double(trials)
        #expect(abs(mean - 32) < 0.5, "mean flipped bits \(mean)")
    }

    @Test func peerHashesAreDomainSeparated() {
        #expect(PeerIdentity.unix(uid: 1000).routingHash != PeerIdentity.ipv4(1000).routingHash)
        #expect(PeerIdentity.unix(uid: 1000).routingHash != PeerIdentity.unix(uid: 1001).routingHash)
        #expect(PeerIdentity.unknown.routingHash == nil)
        #expect(PeerIdentity.ipv6(high: 0, low: 1).routingHash != PeerIdentity.ipv6(high: 1, low: 0).routingHash)
    }
}

@Suite struct PinnedRoutingTests {
    /// Routing contract across restarts and builds: these homes depend only on the ids, the key and the fixed
    /// hash/score functions. A failure means every deployed session would be re-homed.
    @Test func pinnedHomes() throws {
        let r = try Router(targets: (0..<8).map { TargetSpec(id: "w\($0)") })
        let got = ["alice", "bob", "session-1", "session-2", "3f2c9d1e-0000-4000-8000-123456789abc"].map {
            r.id(ofSlot: r.admit(session: $0).ticket?.target ?? -1) ?? "-"
        }
        #expect(got == ["w7", "w1", "w4", "w3", "w5"])
    }
}
