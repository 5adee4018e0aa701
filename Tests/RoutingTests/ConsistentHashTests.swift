import Testing
@testable import Routing

/// Homes of `keys` with the router's current healthy set (-1 when none is healthy).
func homes(_ r: Router, _ keys: [UInt64]) -> [Int] {
    keys.map { r.home(keyHash: $0) ?? -1 }
}

@Suite struct ConsistentHashTests {
    static let sizes = [2, 3, 4, 8, 16, 32]

    @Test(arguments: sizes)
    func evenShares(n: Int) throws {
        let r = try Router(targets: workerIDs(n))
        var count = [Int](repeating: 0, count: n)
        for k in millionKeys { count[r.home(keyHash: k)!] += 1 }
        let maxShareTimesN = Double(count.max()!) / Double(millionKeys.count) * Double(n)
        #expect(maxShareTimesN <= 1.02, "N=\(n): max share × N = \(maxShareTimesN), counts \(count)")
    }

    /// Removing a worker (dead, draining or unregistered) moves exactly the keys it owned, and nothing moves
    /// between survivors. Every worker is removed for N <= 8; a seeded sample of 4 for larger N (2 in debug
    /// builds, which are ~20x slower; CI runs release).
    @Test(arguments: sizes)
    func removingMovesOnlyTheOwnedKeys(n: Int) throws {
        var rng = SplitMix64(seed: UInt64(n))
        #if DEBUG
        let sample = 2
        #else
        let sample = 4
        #endif
        let victims = n <= 8 ? Array(0..<n) : Array((0..<n).shuffled(using: &rng).prefix(sample))
        let r = try Router(targets: workerIDs(n))
        let before = homes(r, millionKeys)
        for (j, v) in victims.enumerated() {
            // Alternate the three ways a worker goes away.
            let how = j % 3
            if how == 0 { r.setHealth(.dead, slot: v) }
            if how == 1 { r.setHealth(.draining, slot: v) }
            if how == 2 { try r.removeTarget(id: "w\(v)") }
            let after = homes(r, millionKeys)
            var owned = 0
            var moved = 0
            var betweenSurvivors = 0
            for i in 0..<millionKeys.count {
                if before[i] == v { owned += 1 }
                if before[i] != after[i] {
                    moved += 1
                    if before[i] != v { betweenSurvivors += 1 }
                }
                #expect(after[i] != v)
            }
            let diff = abs(Double(moved - owned)) / Double(millionKeys.count)
            #expect(diff <= 0.005, "N=\(n) remove w\(v): moved \(moved), owned \(owned)")
            #expect(betweenSurvivors == 0, "N=\(n) remove w\(v): \(betweenSurvivors) keys moved between survivors")
            // The worker comes back: every key returns to its original home (checked on the first 100k keys).
            if how == 2 { try r.addTarget(TargetSpec(id: "w\(v)")) } else { r.setHealth(.healthy, slot: v) }
            let back = homes(r, Array(millionKeys.prefix(100_000))).map { r.id(ofSlot: $0) }
            #expect(back == before.prefix(100_000).map { "w\($0)" })
        }
    }

    @Test(arguments: sizes)
    func addingMovesAboutOneOverNPlusOneAllToTheNewcomer(n: Int) throws {
        let r = try Router(targets: workerIDs(n))
        let before = homes(r, millionKeys)
        let newcomer = try r.addTarget(TargetSpec(id: "new-\(n)"))
        let after = homes(r, millionKeys)
        var moved = 0
        var notToNewcomer = 0
        for i in 0..<millionKeys.count where before[i] != after[i] {
            moved += 1
            if after[i] != newcomer { notToNewcomer += 1 }
        }
        let frac = Double(moved) / Double(millionKeys.count)
        #expect(frac <= 1.0 / Double(n + 1) + 0.005, "N=\(n): moved \(frac)")
        #expect(frac >= 1.0 / Double(n + 1) - 0.005, "N=\(n): moved \(frac) (newcomer gets too little)")
        #expect(notToNewcomer == 0)
    }

    @Test func weightsAreRespected() throws {
        let weights: [UInt32] = [1, 2, 3, 4, 10]
        let r = try Router(targets: weights.enumerated().map { TargetSpec(id: "w\($0.offset)", weight: $0.element) })
        var count = [Int](repeating: 0, count: weights.count)
        for k in millionKeys.prefix(500_000) { count[r.home(keyHash: k)!] += 1 }
        let total = Double(weights.reduce(0, +))
        for (i, w) in weights.enumerated() {
            let share = Double(count[i]) / 500_000
            let want = Double(w) / total
            #expect(abs(share - want) / want < 0.03, "w\(i) weight \(w): share \(share), want \(want)")
        }
        // Weighted rendezvous keeps the minimal-movement property: removing w4 moves only its keys.
        let before = homes(r, Array(millionKeys.prefix(200_000)))
        r.setHealth(.dead, slot: 4)
        let after = homes(r, Array(millionKeys.prefix(200_000)))
        for i in 0..<before.count where before[i] != 4 { #expect(before[i] == after[i]) }
    }

    @Test func deterministicAcrossInstancesAndRegistrationOrder() throws {
        let ids = (0..<16).map { "worker-\($0)" }
        let a = try Router(targets: ids.map { TargetSpec(id: $0) })
        let b = try Router(targets: ids.reversed().map { TargetSpec(id: $0) })
        let keys = Array(millionKeys.prefix(50_000))
        #expect(homes(a, keys).map { a.id(ofSlot: $0) } == homes(b, keys).map { b.id(ofSlot: $0) })
        // Admission with nothing in flight goes to the home.
        for k in keys.prefix(1000) {
            let t = try #require(a.admit(keyHash: k).ticket)
            #expect(t.target == a.home(keyHash: k))
            a.release(t)
        }
        #expect(a.totalInFlight == 0)
        // Same session string, same target, through the String entry point.
        let t1 = try #require(a.admit(session: "abc").ticket)
        let t2 = try #require(b.admit(session: "abc").ticket)
        #expect(a.id(ofSlot: t1.target) == b.id(ofSlot: t2.target))
    }

    @Test func rankingStartsAtHomeAndCoversAll() throws {
        let r = try Router(targets: workerIDs(8))
        for k in millionKeys.prefix(100) {
            let rank = r.ranking(keyHash: k)
            #expect(rank.count == 8)
            #expect(Set(rank).count == 8)
            #expect(rank[0] == r.home(keyHash: k))
            // Killing the home makes the second-ranked the home.
            r.setHealth(.dead, slot: rank[0])
            #expect(r.home(keyHash: k) == rank[1])
            r.setHealth(.healthy, slot: rank[0])
        }
    }
}
