import Testing
@testable import Routing

/// Independent cap formula: ceil(c·(T+1)/N) with c = cNum/cDen exactly.
func expectedCap(cNum: Int, cDen: Int, inFlight t: Int, healthy n: Int) -> Int {
    let num = cNum * (t + 1)
    let den = cDen * n
    return (num + den - 1) / den
}

@Suite struct BoundedLoadTests {
    /// Random arrivals (sticky sessions plus fresh keys) and random completions: at every admission the chosen
    /// target is within the cap, and it is the highest-ranked target that was under the cap.
    @Test(arguments: [(4, 4, 8), (5, 4, 3), (5, 4, 16), (3, 2, 32), (2, 1, 5)])
    func capHoldsAtEveryAdmission(cNum: Int, cDen: Int, n: Int) throws {
        let c = Double(cNum) / Double(cDen)
        let r = try Router(balanceFactor: c, targets: workerIDs(n))
        var rng = SplitMix64(seed: UInt64(cNum * 1000 + n))
        let sessions = sessionKeyHashes(count: 50, seed: 7)
        var open: [Ticket] = []
        var overflowed = 0
        for _ in 0..<20_000 {
            if !open.isEmpty && rng.next() % 100 < 48 {
                let i = Int(rng.next() % UInt64(open.count))
                open.swapAt(i, open.count - 1)
                r.release(open.removeLast())
                continue
            }
            // Hot sessions: a skewed choice so homes do fill up.
            let key = rng.next() % 4 == 0 ? rng.next() : sessions[Int(rng.next() % 7)]
            let t = r.totalInFlight
            let cap = expectedCap(cNum: cNum, cDen: cDen, inFlight: t, healthy: n)
            let rank = r.ranking(keyHash: key)
            let want = try #require(rank.first { r.inFlight(slot: $0) < cap })
            let ticket = try #require(r.admit(keyHash: key).ticket)
            #expect(ticket.target == want)
            #expect(r.inFlight(slot: ticket.target) <= cap, "cap \(cap) exceeded at T=\(t)")
            if ticket.target != rank[0] { overflowed += 1 }
            open.append(ticket)
        }
        for t in open { r.release(t) }
        #expect(r.totalInFlight == 0)
        #expect(overflowed > 0, "the workload never filled a home; the test would prove nothing")
    }

    /// c = 1, N = 4, one key: the home fills at cap 1, then the 2nd, 3rd, 4th ranked take one each
    /// (one, several, all at the cap), then the cap rises to 2 and the home takes the next.
    @Test func oneSeveralAllAtTheCap() throws {
        let r = try Router(balanceFactor: 1.0, targets: workerIDs(4))
        let key = RouteHash.string("session-x")
        let rank = r.ranking(keyHash: key)
        var tickets: [Ticket] = []
        for step in 0..<4 {
            let t = try #require(r.admit(keyHash: key).ticket)
            #expect(t.target == rank[step], "step \(step)")
            tickets.append(t)
        }
        // All four at cap ceil(4/4) = 1; the next admission sees cap ceil(5/4) = 2: back home.
        let t5 = try #require(r.admit(keyHash: key).ticket)
        #expect(t5.target == rank[0])
        // The home did not change: after everything is released the key goes home.
        for t in tickets + [t5] { r.release(t) }
        #expect(r.admit(keyHash: key).ticket?.target == rank[0])
    }

    /// Hard capacity: all targets full → .overloaded; releasing one slot re-admits there.
    @Test func allFullIsOverloaded() throws {
        for policy in RoutingPolicy.allCases {
            let r = try Router(policy: policy, targets: (0..<3).map { TargetSpec(id: "w\($0)", capacity: 2) })
            var tickets: [Ticket] = []
            for i in 0..<6 {
                let a = r.admit(session: "s\(i % 2)", peer: .unix(uid: UInt32(i)))
                tickets.append(try #require(a.ticket, "\(policy) admission \(i)"))
            }
            #expect(r.admit(session: "s0", peer: .unix(uid: 1)) == .overloaded, "\(policy)")
            #expect(r.admit(session: nil) == .overloaded, "\(policy)")
            for s in 0..<3 { #expect(r.inFlight(slot: s) == 2) }
            let freed = tickets.removeFirst()
            r.release(freed)
            #expect(r.admit(session: "s1", peer: .unix(uid: 9)).ticket?.target == freed.target, "\(policy)")
        }
    }

    /// When the targets under the cap are at hard capacity the cap is relaxed rather than refusing work.
    @Test func hardCapacityBeatsBoundedCap() throws {
        let r = try Router(balanceFactor: 1.0, targets: [
            TargetSpec(id: "a", capacity: 1), TargetSpec(id: "b"), TargetSpec(id: "c"),
        ])
        var tickets: [Ticket] = []
        for i in 0..<30 {
            tickets.append(try #require(r.admit(session: "k\(i)").ticket))
        }
        #expect(r.inFlight(slot: 0) == 1)
        #expect(r.inFlight(slot: 1) + r.inFlight(slot: 2) == 29)
    }

    @Test func keylessFallsBackToLeastConnections() throws {
        let r = try Router(targets: workerIDs(4))
        var tickets: [Ticket] = []
        for _ in 0..<40 { tickets.append(try #require(r.admit(session: nil).ticket)) }
        for s in 0..<4 { #expect(r.inFlight(slot: s) == 10) }
    }

    @Test func loadCapFormula() throws {
        let r = try Router(balanceFactor: 1.25, targets: workerIDs(4))
        #expect(r.loadCap(slot: 0) == 1)  // ceil(1.25·1/4)
        var ts: [Ticket] = []
        for i in 0..<10 { ts.append(try #require(r.admit(session: "k\(i)").ticket)) }
        #expect(r.loadCap(slot: 0) == 4)  // ceil(1.25·11/4) = ceil(3.4375)
        let w = try Router(balanceFactor: 1.0, targets: [TargetSpec(id: "a", weight: 1), TargetSpec(id: "b", weight: 3)])
        #expect(w.loadCap(slot: 0) == 1)  // ceil(1·1·1/4)
        #expect(w.loadCap(slot: 1) == 1)  // ceil(1·1·3/4)
        for i in 0..<7 { _ = w.admit(session: "k\(i)") }
        #expect(w.loadCap(slot: 0) == 2)  // ceil(8/4)
        #expect(w.loadCap(slot: 1) == 6)  // ceil(24/4)
    }
}
