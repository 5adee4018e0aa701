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

/// Decides, one supervision tick at a time, when the front should trade CPUs with one worker.
public struct FollowClientsJudge: Sendable, Equatable {
    /// A tick counts only with at least this many idle waits of the worker in it (a busy request stream:
    /// 1,000 per second at the 100 ms tick). Model generation spends its time computing, not waiting, and
    /// never gets here: this is for request streams where transport latency is the cost.
    public var minWaits: UInt64 = 100
    /// At least this share of those waits gave the CPU to another task (sharedWaits ≥ waits × share).
    public var minSharedShare = 0.5
    /// The front's CPU counts as its own while its involuntary switches stay ≤ waits × this.
    public var maxFrontSwitchShare = 0.1
    /// Consecutive qualifying ticks before a swap.
    public var ticksNeeded = 3
    /// Time between two swaps: starts at `minHoldoff`, doubles (up to `maxHoldoff`) for each swap that
    /// comes within `calmAfter` of the previous one, so clients that keep moving do not keep the two
    /// trading places.
    public var minHoldoff: UInt64 = 1_000_000_000
    public var maxHoldoff: UInt64 = 30_000_000_000
    public var calmAfter: UInt64 = 60_000_000_000

    public private(set) var streak = 0
    public private(set) var holdoff: UInt64
    public private(set) var lastSwap: UInt64?
    public private(set) var swaps = 0

    public init() { holdoff = minHoldoff }

    /// One tick's deltas: the worker's idle waits and shared ones, the front's involuntary switches.
    /// Returns true when the front should trade CPUs with this worker now (and counts that swap).
    public mutating func observe(now: UInt64, waits: UInt64, sharedWaits: UInt64, frontSwitches: UInt64) -> Bool {
        let busy = waits >= minWaits
        let shared = Double(sharedWaits) >= Double(waits) * minSharedShare
        let frontAlone = Double(frontSwitches) <= Double(waits) * maxFrontSwitchShare
        guard busy && shared && frontAlone else { streak = 0; return false }
        streak += 1
        guard streak >= ticksNeeded else { return false }
        if let last = lastSwap {
            guard now &- last >= holdoff else { return false }
            holdoff = now &- last < calmAfter ? min(holdoff * 2, maxHoldoff) : minHoldoff
        }
        lastSwap = now
        streak = 0
        swaps += 1
        return true
    }

    /// Forget the streak (the worker was replaced, or the counters jumped).
    public mutating func reset() { streak = 0 }
}
