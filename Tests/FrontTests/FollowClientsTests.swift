// FollowClientsJudge (--front-placement follow): when the front trades CPUs with which worker.
@testable import Front
import Testing

@Suite struct FollowClientsTests {
    typealias Sample = FollowClientsJudge.Sample
    let tick: UInt64 = 100_000_000

    /// A client beside the worker: most idle waits gave the CPU away, the front's CPU is quiet.
    let sharedTick = Sample(waits: 4000, sharedWaits: 3900)
    let quietTick = Sample(waits: 4000, sharedWaits: 0)

    /// Runs ticks 1...n (each `tick` long) with the same samples; returns the picks, swapping each time.
    func run(_ j: inout FollowClientsJudge, from start: Int = 1, ticks n: Int, _ workers: [Sample],
             frontSwitches: UInt64 = 3) -> [Int?] {
        var picks: [Int?] = []
        for k in start..<(start + n) {
            let now = UInt64(k) * tick
            let p = j.observe(now: now, elapsed: tick, frontSwitches: frontSwitches, workers: workers)
            if let p { j.didSwap(slot: p, now: now) }
            picks.append(p)
        }
        return picks
    }

    @Test func picksTheSharedWorkerAfterTwoTicks() {
        var j = FollowClientsJudge()
        // Worker 1 shares its CPU with a client, worker 0 does not.
        let picks = run(&j, ticks: 4, [quietTick, sharedTick])
        #expect(picks == [nil, 1, nil, nil], "the second tick swaps; the streak starts over after it (and the hold-off runs)")
        #expect(j.swaps == 1 && j.lastSwap == 2 * tick)
        // A pick that the pool could not carry out is not a swap: no hold-off starts.
        var k = FollowClientsJudge()
        var fired: [Int?] = []
        for t in 1...3 {
            fired.append(k.observe(now: UInt64(t) * tick, elapsed: tick, frontSwitches: 0, workers: [sharedTick]))
        }
        #expect(fired == [nil, 0, 0] && k.swaps == 0 && k.lastSwap == nil)
        k.reset(slot: 0)
        #expect(k.observe(now: 4 * tick, elapsed: tick, frontSwitches: 0, workers: [sharedTick]) == nil)
    }

    /// Any tick that does not qualify breaks the streak.
    @Test func eachConditionIsNeeded() {
        let cases: [(sample: Sample, front: UInt64, elapsed: UInt64, why: String)] = [
            (Sample(waits: 99, sharedWaits: 99), 0, tick, "too few waits: not a busy request stream (model generation, an idle server)"),
            (Sample(waits: 150, sharedWaits: 150), 0, 2 * tick, "150 waits in a late tick of 200 ms: 75 per 100 ms"),
            (Sample(waits: 4000, sharedWaits: 1999), 0, tick, "under half of the waits shared the CPU"),
            (Sample(waits: 4000, sharedWaits: 4000), 401, tick, "the front's CPU has company already (a client beside the front, or a hog)"),
            (Sample(waits: 4000, sharedWaits: 4000, eligible: false), 0, tick, "the worker is not eligible (another node, several CPUs, not ready)"),
        ]
        for c in cases {
            var j = FollowClientsJudge()
            #expect(!j.qualifies(c.sample, frontSwitches: c.front, elapsed: c.elapsed), "\(c.why)")
            // Qualifying ticks alternate with the case under test: never two in a row.
            var fired = false
            for k in 1...10 {
                let bad = k % 2 == 0
                fired = fired || j.observe(now: UInt64(k) * tick, elapsed: bad ? c.elapsed : tick,
                                           frontSwitches: bad ? c.front : 0,
                                           workers: [bad ? c.sample : Sample(waits: 4000, sharedWaits: 4000)]) != nil
            }
            #expect(!fired, "swapped although \(c.why)")
        }
        // Exactly at the limits it qualifies (100 waits per 100 ms, half shared, a tenth of front switches).
        let j = FollowClientsJudge()
        #expect(j.qualifies(Sample(waits: 100, sharedWaits: 50), frontSwitches: 10, elapsed: tick))
        #expect(j.qualifies(Sample(waits: 200, sharedWaits: 100), frontSwitches: 20, elapsed: 2 * tick))
    }

    /// Clients that keep moving do not keep the front moving: the wait between two swaps (with any
    /// workers) doubles while swaps come within a minute of each other, up to 30 s, and starts over after calm.
    @Test func holdOffIsTheFrontsAndDoublesAndRecovers() {
        var j = FollowClientsJudge()
        var now: UInt64 = 0
        /// Qualifying ticks (alternately for worker 0 and worker 1) until a swap; returns its time.
        var which = 0
        func nextSwap() -> UInt64 {
            which ^= 1
            let workers = which == 0 ? [sharedTick, quietTick] : [quietTick, sharedTick]
            while true {
                now += tick
                if let p = j.observe(now: now, elapsed: tick, frontSwitches: 0, workers: workers) {
                    j.didSwap(slot: p, now: now)
                    return now
                }
            }
        }
        var last = nextSwap()
        var gaps: [UInt64] = []
        for _ in 0..<8 {
            let t = nextSwap()
            gaps.append((t - last) / tick)
            last = t
        }
        // 1 s, then 2, 4, 8, 16, 30, 30, 30 (in ticks; the streak of two fits inside each wait), though each
        // swap is with the other worker.
        #expect(gaps == [10, 20, 40, 80, 160, 300, 300, 300], "\(gaps)")
        // Two minutes without a swap: back to one second.
        now += 1200 * tick
        let calm = nextSwap()
        #expect(j.holdoff == j.minHoldoff)
        #expect((nextSwap() - calm) / tick == 10)
    }
}
