import Testing
@testable import Front

/// RequestTable (open addressing, backward-shift deletion) must behave exactly like a Dictionary under any
/// mix of inserts, updates, lookups and removals, including long probe runs and growth.
@Suite struct RequestTableTests {
    /// A deterministic generator (the same sequence every run, so a failure reproduces).
    struct SplitMix { var s: UInt64; mutating func next() -> UInt64 { s &+= 0x9E37_79B9_7F4A_7C15; var z = s; z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9; z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB; return z ^ (z >> 31) } }

    func check(_ t: RequestTable<Int>, _ d: [UInt64: Int], probes: [UInt64]) {
        #expect(t.count == d.count)
        #expect(t.isEmpty == d.isEmpty)
        for id in probes { #expect(t[id] == d[id], "id \(id)") }
        #expect(Set(t.ids(where: { _ in true })) == Set(d.keys))
    }

    @Test(arguments: [0 as UInt64, 1, 2, 3])
    func matchesDictionary(seed: UInt64) {
        var rng = SplitMix(s: seed)
        var t = RequestTable<Int>(capacity: 4)
        var d: [UInt64: Int] = [:]
        var next: UInt64 = 1
        var live: [UInt64] = []
        for step in 0..<8_000 {
            let r = rng.next() % 100
            if r < 45 || live.isEmpty {
                // New ids in sequence (how the front hands them out), sometimes with gaps.
                next += 1 + (seed == 3 ? rng.next() % 1000 : 0)
                t[next] = step; d[next] = step; live.append(next)
            } else if r < 85 {
                let k = Int(rng.next() % UInt64(live.count))
                let id = live.remove(at: k)
                #expect(t.removeValue(forKey: id) == d.removeValue(forKey: id))
            } else if r < 95 {
                let id = live[Int(rng.next() % UInt64(live.count))]
                t[id] = -step; d[id] = -step
                #expect(t.update(id) { v -> Int in v += 1; return v } == -step + 1)
                d[id]! += 1
            } else {
                // Absent ids: never inserted, already removed.
                #expect(t.removeValue(forKey: next + 1) == nil)
                #expect(t.update(next + 1) { _ in 0 } == nil)
            }
            if step % 997 == 0 { check(t, d, probes: Array(1...next).suffix(1500)) }
        }
        check(t, d, probes: Array(1...next).suffix(3000))
        t.removeAll()
        #expect(t.isEmpty && t[live.first ?? 1] == nil)
    }

    /// Ids that share a home slot (found by search) form one long run; removing from its middle must keep
    /// every later member reachable.
    @Test func collidingRunSurvivesRemovals() {
        var t = RequestTable<Int>(capacity: 512)   // no growth below 512 entries
        // Ids whose home is slot 5 of a 1024-slot table.
        let shift: UInt64 = 64 - 10
        var colliding: [UInt64] = []
        var id: UInt64 = 1
        while colliding.count < 40 {
            if Int((id &* 0x9E37_79B9_7F4A_7C15) >> shift) == 5 { colliding.append(id) }
            id += 1
        }
        for (k, c) in colliding.enumerated() { t[c] = k }
        for k in stride(from: 0, to: 40, by: 3) { #expect(t.removeValue(forKey: colliding[k]) == k) }
        for (k, c) in colliding.enumerated() { #expect(t[c] == (k % 3 == 0 ? nil : k), "member \(k)") }
        #expect(t.count == 40 - 14)
    }
}
