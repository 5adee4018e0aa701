// FollowClientsJudge (--front-placement follow): when the front trades CPUs with a worker.
@testable import Front
import Testing

@Suite struct FollowClientsTests {
    let tick: UInt64 = 100_000_000

    /// A client beside the worker: most idle waits gave the CPU away, the front's CPU is quiet.
    @Test func swapsAfterThreeSharedTicksOnly() {
        var j = FollowClientsJudge()
        var fired: [Bool] = []
        for k in 1...4 { fired.append(j.observe(now: UInt64(k) * tick, waits: 4000, sharedWaits: 3900, frontSwitches: 3)) }
        // The third tick swaps; the streak starts over after it.
        #expect(fired == [false, false, true, false])
        #expect(j.swaps == 1)
    }

    /// Any tick that does not qualify breaks the streak.
    @Test func eachConditionIsNeeded() {
        let cases: [(waits: UInt64, shared: UInt64, front: UInt64, why: String)] = [
            (99, 99, 0, "too few waits: not a busy request stream (model generation, an idle server)"),
            (4000, 1999, 0, "under half of the waits shared the CPU"),
            (4000, 4000, 401, "the front's CPU has company already (a client beside the front, or a hog)"),
        ]
        for c in cases {
            var j = FollowClientsJudge()
            var fired = false
            for k in 0..<10 {
                // Qualifying ticks alternate with the case under test: never three in a row.
                let bad = k % 3 == 2
                fired = fired || j.observe(now: UInt64(k + 1) * tick, waits: bad ? c.waits : 4000,
                                           sharedWaits: bad ? c.shared : 4000, frontSwitches: bad ? c.front : 0)
            }
            #expect(!fired, "swapped although \(c.why)")
            var steady = FollowClientsJudge()
            var steadyFired = false
            for k in 0..<10 {
                steadyFired = steadyFired || steady.observe(now: UInt64(k + 1) * tick, waits: c.waits,
                                                            sharedWaits: c.shared, frontSwitches: c.front)
            }
            #expect(!steadyFired, "\(c.why)")
        }
        // Exactly at the limits it still swaps.
        var edge = FollowClientsJudge()
        var fired = false
        for k in 0..<3 { fired = edge.observe(now: UInt64(k + 1) * tick, waits: 100, sharedWaits: 50, frontSwitches: 10) }
        #expect(fired)
    }

    /// Clients that keep moving do not make the two trade places on every streak: the wait between swaps
    /// doubles while swaps come within a minute of each other (up to 30 s), and starts over after calm.
    @Test func holdOffDoublesAndRecovers() {
        var j = FollowClientsJudge()
        var now: UInt64 = 0
        /// Qualifying ticks until the judge fires; returns the time it fired.
        func nextSwap() -> UInt64 {
            while true {
                now += tick
                if j.observe(now: now, waits: 1000, sharedWaits: 1000, frontSwitches: 0) { return now }
            }
        }
        var last = nextSwap()
        var gaps: [UInt64] = []
        for _ in 0..<8 {
            let t = nextSwap()
            gaps.append((t - last) / tick)
            last = t
        }
        // 1 s, then 2, 4, 8, 16, 30, 30, 30 (in ticks; the streak of three fits inside each wait).
        #expect(gaps == [10, 20, 40, 80, 160, 300, 300, 300], "\(gaps)")
        // Two minutes without a qualifying tick: back to one second.
        now += 1200 * tick
        let calm = nextSwap()
        #expect(j.holdoff == j.minHoldoff)
        let after = nextSwap()
        #expect((after - calm) / tick == 10)
    }
}
