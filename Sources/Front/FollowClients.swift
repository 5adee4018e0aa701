// Front placement: with `--front-placement follow` (the default) the front trades CPUs with a worker when
// the clients it serves run on that worker's CPU.
//
// Why: the front and each worker are pinned to CPUs of their own, and a local client runs wherever the
// scheduler puts it. Beside the front, a round trip stays on one CPU for the client's half (the front's
// send wakes the client where the front runs, the client's next request wakes the front there). Beside a
// worker, every answer wakes the client across CPUs (an IPI) and its request crosses back: on a 2-vCPU VM,
// 23 µs against 12 µs per echo round trip. The kernel's wake-up placement does not move such a client: the
// front's wake-ups keep it on its previous CPU, and only the load balancer moves it, now and then. The
// client cannot be moved from here, but the front can: trading the front's CPU with that worker's puts
// the front beside the client, and the worker on a CPU of its own again.
//
// How it is seen (no client is inspected): the worker's idle wait spins and yields its CPU between checks
// (WorkerProcess.run); a sched_yield that takes 2-200 µs gave the CPU to another task for a moment, and a
// client woken by each answer does exactly that. The worker counts its waits and the shared ones in its
// control block (`idle_waits`, `idle_waits_shared`); the pool reads them every supervision tick (100 ms).
// The front's own involuntary context switches (its yields to a task beside it count) tell whether its
// CPU already has company.
//
// `FollowClientsJudge` is the rule, as a pure value type; WorkerPool.followClients feeds it and swaps.

/// `serve --front-placement`.
public enum FrontPlacement: String, Sendable, CaseIterable {
    /// Trade CPUs with a worker whose CPU the front's clients share (front and worker one CPU each).
    case follow
    /// Stay on the CPUs given at start.
    case fixed
}

/// Decides, one supervision tick at a time, when the front should trade CPUs with which worker. One per
/// pool: a streak per worker, one hold-off for the front (it is the front that moves).
public struct FollowClientsJudge: Sendable, Equatable {
    /// One worker's counters over a tick.
    public struct Sample: Sendable, Equatable {
        /// Idle waits, and those that gave the CPU to another task (`sharedWaits` ≤ `waits`).
        public var waits: UInt64
        public var sharedWaits: UInt64
        /// False for a worker the front cannot trade with (not ready, several CPUs, another NUMA node, a
        /// tensor-parallel group, or counters that went backwards): its streak starts over.
        public var eligible: Bool
        public init(waits: UInt64, sharedWaits: UInt64, eligible: Bool = true) {
            self.waits = waits; self.sharedWaits = sharedWaits; self.eligible = eligible
        }
    }

    /// The tick the thresholds are stated for (the pool's supervision timer).
    public var tick: UInt64 = 100_000_000
    /// A tick counts only with at least this many idle waits of the worker per `tick` (a busy request
    /// stream: 1,000 per second). Model generation spends its time computing, not waiting, and never gets
    /// here: this is for request streams where transport latency is the cost.
    public var minWaits: UInt64 = 100
    /// At least this share of those waits gave the CPU to another task (sharedWaits ≥ waits × share).
    public var minSharedShare = 0.5
    /// The front's CPU counts as its own while its involuntary switches stay ≤ waits × this.
    public var maxFrontSwitchShare = 0.1
    /// Consecutive qualifying ticks before a swap. Each tick holds hundreds of waits, and the hold-off
    /// bounds what a wrong call costs; 2 (200 ms) reacts before a short client run is mostly over.
    public var ticksNeeded = 2
    /// Time between two swaps of the front (with any workers): starts at `minHoldoff`, doubles (up to
    /// `maxHoldoff`) for each swap that comes within `calmAfter` of the previous one, so clients that keep
    /// moving do not keep the front moving.
    public var minHoldoff: UInt64 = 1_000_000_000
    public var maxHoldoff: UInt64 = 30_000_000_000
    public var calmAfter: UInt64 = 60_000_000_000

    public private(set) var streaks: [Int] = []
    public private(set) var holdoff: UInt64
    public private(set) var lastSwap: UInt64?
    public private(set) var swaps = 0

    public init() { holdoff = minHoldoff }

    /// Whether one worker's tick qualifies: busy, mostly shared, the front's CPU quiet.
    public func qualifies(_ s: Sample, frontSwitches: UInt64, elapsed: UInt64) -> Bool {
        guard s.eligible, elapsed > 0 else { return false }
        // waits per `tick` ≥ minWaits, without dividing (a late tick stretches the interval).
        let busy = Double(s.waits) * Double(tick) >= Double(minWaits) * Double(elapsed)
        let shared = Double(s.sharedWaits) >= Double(s.waits) * minSharedShare
        let frontAlone = Double(frontSwitches) <= Double(s.waits) * maxFrontSwitchShare
        return busy && shared && frontAlone
    }

    /// One tick: every worker's sample (by slot) and the front's involuntary switches over `elapsed` ns.
    /// Returns the slot the front should trade CPUs with now, if any. Call `didSwap` once it has.
    public mutating func observe(now: UInt64, elapsed: UInt64, frontSwitches: UInt64, workers: [Sample]) -> Int? {
        if streaks.count != workers.count { streaks = Array(repeating: 0, count: workers.count) }
        var pick: Int?
        for (i, s) in workers.enumerated() {
            streaks[i] = qualifies(s, frontSwitches: frontSwitches, elapsed: elapsed) ? streaks[i] + 1 : 0
            if pick == nil && streaks[i] >= ticksNeeded { pick = i }
        }
        guard let pick else { return nil }
        if let last = lastSwap, now &- last < holdoff { return nil }
        return pick
    }

    /// The front traded CPUs with `slot` at `now`: the hold-off before the next swap starts.
    public mutating func didSwap(slot: Int, now: UInt64) {
        if let last = lastSwap {
            holdoff = now &- last < calmAfter ? (holdoff > maxHoldoff / 2 ? maxHoldoff : min(holdoff * 2, maxHoldoff))
                                              : minHoldoff
        }
        lastSwap = now
        swaps += 1
        for i in streaks.indices { streaks[i] = 0 }
    }

    /// Forget one worker's streak (it was replaced).
    public mutating func reset(slot: Int) { if streaks.indices.contains(slot) { streaks[slot] = 0 } }
}
