import Testing
@testable import Routing

@Suite struct PolicyTests {
    @Test func roundRobinCyclesAndSkipsUnhealthy() throws {
        let r = try Router(policy: .roundRobin, targets: workerIDs(4))
        var seq: [Int] = []
        for _ in 0..<8 {
            let t = try #require(r.admit(session: "same").ticket)
            seq.append(t.target)
            r.release(t)
        }
        #expect(seq == [0, 1, 2, 3, 0, 1, 2, 3])
        r.setHealth(.draining, slot: 1)
        r.setHealth(.dead, slot: 3)
        var seq2: [Int] = []
        for _ in 0..<4 { seq2.append(try #require(r.admit(session: nil).ticket).target) }
        #expect(seq2 == [0, 2, 0, 2])
    }

    @Test func weightedRoundRobinIsSmoothAndProportional() throws {
        let r = try Router(policy: .roundRobin, targets: [
            TargetSpec(id: "a", weight: 5), TargetSpec(id: "b", weight: 1), TargetSpec(id: "c", weight: 1),
        ])
        var seq: [Int] = []
        for _ in 0..<7 {
            let t = try #require(r.admit(session: nil).ticket)
            seq.append(t.target)
            r.release(t)
        }
        // nginx's smooth weighted round-robin for 5:1:1 is a a b a c a a.
        #expect(seq == [0, 0, 1, 0, 2, 0, 0])
    }

    /// Equal-cost requests (they finish in admission order) with random arrivals: max − min ≤ 1 always.
    @Test(arguments: [2, 3, 5, 8, 16])
    func leastConnectionsEqualCostStaysBalanced(n: Int) throws {
        let r = try Router(policy: .leastConnections, targets: workerIDs(n))
        var rng = SplitMix64(seed: UInt64(n) &* 77)
        var fifo: [Ticket] = []
        var head = 0
        for _ in 0..<20_000 {
            if head < fifo.count && rng.next() % 2 == 0 {
                r.release(fifo[head])
                head += 1
            } else {
                let before = (0..<n).map { r.inFlight(slot: $0) }
                let t = try #require(r.admit(session: nil).ticket)
                #expect(before[t.target] == before.min(), "not a least-loaded target")
                fifo.append(t)
            }
            let counts = (0..<n).map { r.inFlight(slot: $0) }
            #expect(counts.max()! - counts.min()! <= 1, "\(counts)")
        }
    }

    @Test func leastConnectionsTiesAreRoundRobin() throws {
        let r = try Router(policy: .leastConnections, targets: workerIDs(3))
        var seq: [Int] = []
        for _ in 0..<6 {
            let t = try #require(r.admit(session: nil).ticket)
            seq.append(t.target)
            r.release(t)
        }
        #expect(seq == [0, 1, 2, 0, 1, 2])
    }

    @Test func leastConnectionsWeighted() throws {
        let r = try Router(policy: .leastConnections, targets: [TargetSpec(id: "a", weight: 1), TargetSpec(id: "b", weight: 3)])
        for _ in 0..<40 { _ = r.admit(session: nil) }
        #expect(r.inFlight(slot: 0) == 10)
        #expect(r.inFlight(slot: 1) == 30)
    }

    @Test func clientHashUsesPeerIdentity() throws {
        let r = try Router(policy: .clientHash, targets: workerIDs(4))
        // Same uid: same target, whatever the session.
        let a = try #require(r.admit(session: "x", peer: .unix(uid: 1000)).ticket)
        let b = try #require(r.admit(session: "y", peer: .unix(uid: 1000)).ticket)
        #expect(a.target == b.target)
        // Many uids spread over all targets (nginx's ip_hash would send every Unix client to one).
        var used = Set<Int>()
        for uid in 0..<64 as Range<UInt32> {
            let t = try #require(r.admit(session: nil, peer: .unix(uid: uid)).ticket)
            used.insert(t.target)
            r.release(t)
        }
        #expect(used.count == 4)
        var usedIP = Set<Int>()
        for ip in 0..<64 as Range<UInt32> {
            let t = try #require(r.admit(session: nil, peer: .ipv4(0x0a00_0000 | ip)).ticket)
            usedIP.insert(t.target)
            r.release(t)
        }
        #expect(usedIP.count == 4)
        // Unknown peer: least-connections (goes to an idle target, not one of the two busy ones' home).
        let c = try #require(r.admit(session: nil, peer: .unknown).ticket)
        #expect(r.inFlight(slot: c.target) == 1)
        #expect(c.target != a.target)
    }

    @Test func deadAndDrainingReceiveNothingAndSessionsReturn() throws {
        let r = try Router(targets: workerIDs(4))
        let keys = (0..<200).map { RouteHash.string("s\($0)") }
        let home = keys.map { r.home(keyHash: $0)! }
        r.setHealth(.dead, slot: 0)
        r.setHealth(.draining, slot: 1)
        for k in keys {
            let t = try #require(r.admit(keyHash: k).ticket)
            #expect(t.target == 2 || t.target == 3)
            r.release(t)
        }
        r.setHealth(.healthy, slot: 0)
        r.setHealth(.healthy, slot: 1)
        for (i, k) in keys.enumerated() {
            let t = try #require(r.admit(keyHash: k).ticket)
            #expect(t.target == home[i])
            r.release(t)
        }
        for s in 0..<4 { r.setHealth(.dead, slot: s) }
        #expect(r.admit(keyHash: keys[0]) == .unavailable)
        let empty = try Router()
        #expect(empty.admit(session: "a") == .unavailable)
    }

    @Test func ticketsSurviveHealthChangesAndRemoval() throws {
        let r = try Router(policy: .roundRobin, targets: workerIDs(2))
        let t0 = try #require(r.admit(session: nil).ticket)
        let t1 = try #require(r.admit(session: nil).ticket)
        r.setHealth(.draining, slot: t0.target)
        r.release(t0)  // a draining target's requests still complete
        #expect(r.inFlight(slot: t0.target) == 0)
        try r.removeTarget(id: "w\(t1.target)")
        #expect(r.totalInFlight == 0)
        let re = try r.addTarget(TargetSpec(id: "w9"))
        #expect(re == t1.target)  // slot reused
        let t2 = try #require(r.admit(session: nil).ticket)
        r.release(t1)  // stale: ignored, does not touch w9's count
        #expect(r.inFlight(slot: t2.target) == 1)
        r.release(t2)
        r.release(t2)  // double release never goes negative
        #expect(r.inFlight(slot: t2.target) == 0)
        #expect(r.totalInFlight == 0)
    }

    @Test func invalidConfigurationIsTyped() throws {
        #expect(throws: RoutingError.invalidBalanceFactor(0.5)) { try Router(balanceFactor: 0.5) }
        #expect(throws: RoutingError.self) { try Router(balanceFactor: .nan) }
        #expect(throws: RoutingError.invalidWeight(id: "a", weight: 0)) { try Router(targets: [TargetSpec(id: "a", weight: 0)]) }
        #expect(throws: RoutingError.invalidCapacity(id: "a", capacity: 0)) { try Router(targets: [TargetSpec(id: "a", capacity: 0)]) }
        #expect(throws: RoutingError.duplicateTarget("a")) { try Router(targets: [TargetSpec(id: "a"), TargetSpec(id: "a")]) }
        #expect(throws: RoutingError.emptyTargetID) { try Router(targets: [TargetSpec(id: "")]) }
        #expect(throws: RoutingError.tooManyTargets(limit: 2)) { try Router(targets: workerIDs(3), maxTargets: 2) }
        let r = try Router(targets: workerIDs(2))
        #expect(throws: RoutingError.unknownTarget("zz")) { try r.setHealth(.dead, id: "zz") }
        #expect(throws: RoutingError.unknownTarget("zz")) { try r.removeTarget(id: "zz") }
        #expect(try RoutingPolicy.parse("round-robin") == .roundRobin)
        #expect(throws: RoutingError.unknownPolicy("ip-hash")) { try RoutingPolicy.parse("ip-hash") }
        #expect(RoutingError.unknownPolicy("x").description.contains("consistent-hash"))
    }
}
