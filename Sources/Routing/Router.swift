#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Chooses a target for each request and tracks requests in flight per target. Pure computation, no I/O.
///
/// Threading: a `Router` is confined to one thread (the front's event loop); it is deliberately not
/// `Sendable` and takes no locks.
///
/// Lifecycle of a request: `admit(...)` returns `.admitted(ticket)` and counts the request in flight on
/// `ticket.target`; `release(ticket)` when the request finishes un-counts it. Every admitted ticket must be
/// released exactly once.
///
/// Consistent hashing is rendezvous hashing: target i's score for key k is the top 48 bits of
/// mum(hash(k) ^ a_i, hash(k) ^ b_i) (ties, p ~ 2^-48, go to the higher slot), where a_i =
/// RouteHash.string(id_i), b_i = mix64(a_i ^ 0x5357_4954_4348_5244) and mum(x, y) = high64(x·y) ^ low64(x·y); the key's ranking is the targets by descending score. With unequal weights
/// the score is weighted rendezvous, w_i / -ln(u), u = the 53 top score bits as a number in (0, 1). A request
/// goes to the highest-ranked target that is healthy and has room, so
///   - removing (or killing/draining) a target moves only the keys it owned, each to its next-ranked target,
///     and they come back when it returns;
///   - adding a target moves to it only the keys it now ranks first for, about 1/(N+1) of them.
/// Bounded load (consistent-hash only): with c the balance factor, T the requests in flight on healthy
/// targets and W the sum of healthy weights, target i has room when in_flight_i < ceil(c·(T+1)·w_i/W), which
/// is ceil(c·(T+1)/N) for equal weights. A full home sends this request, and only this one, to the key's next
/// ranked target with room; the home does not change. c is quantized to 1/65536 so caps are exact integers.
/// Since the caps sum to at least c·(T+1) > T there is always a target under its cap; only the per-target
/// hard capacity (`TargetSpec.capacity`) can make every target full (→ `.overloaded`). If the targets under
/// their cap are all at hard capacity, the cap is relaxed for that request (ranking order, hard capacity only).
public final class Router {
    /// Maximum weight of a target.
    public static let maxWeight: UInt32 = 65_535
    /// Balance factor range (c = 1 is perfectly even, large c approaches plain consistent hashing).
    public static let minBalanceFactor = 1.0
    public static let maxBalanceFactor = 1024.0
    public static let defaultBalanceFactor = 1.25
    /// Upper bound of `maxTargets` (slot + 1 must fit the 16 low bits of a packed score).
    public static let targetLimit = 4096

    public let policy: RoutingPolicy
    public let balanceFactor: Double
    /// Most targets this router can hold (slots are preallocated).
    public let maxTargets: Int

    // --- Per-slot state, contiguous arrays of `maxTargets` entries (indices 0 ..< slotCount are in use or
    // vacant; slots >= slotCount are uninitialized-but-zeroed). Owned by this instance, freed in deinit. ---
    /// Rendezvous seeds: seed = RouteHash.string(id), seed2 = mix64(seed ^ 0x5357_4954_4348_5244).
    private let seed: UnsafeMutablePointer<UInt64>
    private let seed2: UnsafeMutablePointer<UInt64>
    /// Weight as integer and as Double (for weighted rendezvous).
    private let weight: UnsafeMutablePointer<UInt32>
    private let weightF: UnsafeMutablePointer<Double>
    /// Hard capacity (>= 1).
    private let capacity: UnsafeMutablePointer<Int>
    /// capacity[i] when the slot is healthy, else 0: "has room" is inFlight[i] < limit[i].
    private let limit: UnsafeMutablePointer<Int>
    /// Requests in flight (admitted, not yet released). Invariant: 0 <= inFlight[i].
    private let inFlightCount: UnsafeMutablePointer<Int>
    /// TargetHealth raw value, or `vacant` for an unused slot.
    private let state: UnsafeMutablePointer<UInt8>
    /// Bumped when a slot is vacated so that stale tickets are ignored.
    private let generation: UnsafeMutablePointer<UInt32>
    /// Smooth weighted round-robin running value per slot.
    private let swrrCurrent: UnsafeMutablePointer<Int>
    /// Seeds of the healthy slots, packed in slot order, and their slot numbers: the fast rendezvous scan
    /// reads only these `hotCount` entries. Rebuilt by `membershipChanged()` on every add/remove/health change.
    private let hotSeed: UnsafeMutablePointer<UInt64>
    private let hotSeed2: UnsafeMutablePointer<UInt64>
    private let hotSlot: UnsafeMutablePointer<Int>
    private var hotCount = 0
    private static let vacant: UInt8 = 0xFF
    private static let healthyRaw = TargetHealth.healthy.rawValue

    private var ids: [String?]
    private var slotCount = 0
    /// Aggregates over healthy slots: count, sum of weights, sum of in flight (T of the bounded-load formula).
    private var healthyCount = 0
    private var healthyWeight: UInt64 = 0
    private var healthyInFlight = 0
    /// Requests in flight over all slots.
    public private(set) var totalInFlight = 0
    /// Number of registered targets whose weight differs from the first one's; 0 means uniform weights.
    private var uniformWeights = true
    /// Balance factor in units of 1/65536.
    private let cFixed: UInt64
    /// Round-robin cursor (next slot to consider) shared by round-robin and least-connections tie-breaks.
    private var cursor = 0

    /// Creates a router. Throws on an invalid balance factor, weight, capacity, empty or duplicate id, or more
    /// than `maxTargets` targets.
    public init(
        policy: RoutingPolicy = .default,
        balanceFactor: Double = Router.defaultBalanceFactor,
        targets: [TargetSpec] = [],
        maxTargets: Int = 256
    ) throws(RoutingError) {
        guard balanceFactor.isFinite, balanceFactor >= Router.minBalanceFactor,
            balanceFactor <= Router.maxBalanceFactor
        else { throw .invalidBalanceFactor(balanceFactor) }
        guard maxTargets >= 1, maxTargets <= Router.targetLimit else { throw .tooManyTargets(limit: Router.targetLimit) }
        self.policy = policy
        self.balanceFactor = balanceFactor
        self.cFixed = UInt64((balanceFactor * 65536).rounded())
        self.maxTargets = maxTargets
        seed = Self.filled(0, count: maxTargets)
        seed2 = Self.filled(0, count: maxTargets)
        weight = Self.filled(0, count: maxTargets)
        weightF = Self.filled(0, count: maxTargets)
        capacity = Self.filled(0, count: maxTargets)
        limit = Self.filled(0, count: maxTargets)
        inFlightCount = Self.filled(0, count: maxTargets)
        state = Self.filled(Router.vacant, count: maxTargets)
        generation = Self.filled(0, count: maxTargets)
        hotSeed = Self.filled(0, count: maxTargets)
        hotSeed2 = Self.filled(0, count: maxTargets)
        hotSlot = Self.filled(0, count: maxTargets)
        swrrCurrent = Self.filled(0, count: maxTargets)
        ids = []
        for t in targets { _ = try addTarget(t) }
    }

    /// A buffer of `count` elements, each `value` (freed in deinit).
    private static func filled<T>(_ value: T, count: Int) -> UnsafeMutablePointer<T> {
        let p = UnsafeMutablePointer<T>.allocate(capacity: count)
        p.initialize(repeating: value, count: count)
        return p
    }

    deinit {
        seed.deallocate()
        seed2.deallocate()
        weight.deallocate()
        weightF.deallocate()
        capacity.deallocate()
        limit.deallocate()
        inFlightCount.deallocate()
        state.deallocate()
        generation.deallocate()
        swrrCurrent.deallocate()
        hotSeed.deallocate()
        hotSeed2.deallocate()
        hotSlot.deallocate()
    }

    // MARK: - Targets

    /// Registers a target (healthy, nothing in flight) and returns its slot. A vacated slot is reused.
    @discardableResult
    public func addTarget(_ spec: TargetSpec) throws(RoutingError) -> Int {
        guard !spec.id.isEmpty else { throw .emptyTargetID }
        guard spec.weight >= 1, spec.weight <= Router.maxWeight else {
            throw .invalidWeight(id: spec.id, weight: spec.weight)
        }
        guard spec.capacity >= 1 else { throw .invalidCapacity(id: spec.id, capacity: spec.capacity) }
        guard slot(of: spec.id) == nil else { throw .duplicateTarget(spec.id) }
        var s = 0
        while s < slotCount && state[s] != Router.vacant { s += 1 }
        if s == slotCount {
            guard slotCount < maxTargets else { throw .tooManyTargets(limit: maxTargets) }
            slotCount += 1
            ids.append(nil)
        }
        ids[s] = spec.id
        seed[s] = RouteHash.string(spec.id)
        seed2[s] = Router.secondSeed(seed[s])
        weight[s] = spec.weight
        weightF[s] = Double(spec.weight)
        capacity[s] = spec.capacity
        inFlightCount[s] = 0
        swrrCurrent[s] = 0
        state[s] = TargetHealth.healthy.rawValue
        limit[s] = spec.capacity
        healthyCount += 1
        healthyWeight += UInt64(spec.weight)
        membershipChanged()
        return s
    }

    /// Unregisters a target. Its in-flight requests are forgotten: releasing their tickets later is a no-op.
    public func removeTarget(id: String) throws(RoutingError) {
        guard let s = slot(of: id) else { throw .unknownTarget(id) }
        if state[s] == Router.healthyRaw {
            healthyCount -= 1
            healthyWeight -= UInt64(weight[s])
            healthyInFlight -= inFlightCount[s]
        }
        totalInFlight -= inFlightCount[s]
        inFlightCount[s] = 0
        state[s] = Router.vacant
        limit[s] = 0
        generation[s] &+= 1
        ids[s] = nil
        while slotCount > 0 && state[slotCount - 1] == Router.vacant {
            slotCount -= 1
            ids.removeLast()
        }
        membershipChanged()
    }

    /// Sets a target's health. Draining and dead targets receive nothing new; their in-flight requests may
    /// still be released.
    public func setHealth(_ health: TargetHealth, id: String) throws(RoutingError) {
        guard let s = slot(of: id) else { throw .unknownTarget(id) }
        setHealth(health, slot: s)
    }

    /// Sets a target's health by slot; an unused slot is ignored.
    public func setHealth(_ health: TargetHealth, slot s: Int) {
        guard s >= 0, s < slotCount, state[s] != Router.vacant else { return }
        let was = state[s] == Router.healthyRaw
        let now = health == .healthy
        if was && !now {
            healthyCount -= 1
            healthyWeight -= UInt64(weight[s])
            healthyInFlight -= inFlightCount[s]
        } else if !was && now {
            healthyCount += 1
            healthyWeight += UInt64(weight[s])
            healthyInFlight += inFlightCount[s]
        }
        state[s] = health.rawValue
        limit[s] = now ? capacity[s] : 0
        membershipChanged()
    }

    /// The slot of a registered target.
    public func slot(of id: String) -> Int? {
        var i = 0
        while i < slotCount {
            if ids[i] == id { return i }
            i += 1
        }
        return nil
    }

    /// The id of the target in a slot, nil when the slot is unused.
    public func id(ofSlot s: Int) -> String? {
        guard s >= 0, s < slotCount else { return nil }
        return ids[s]
    }

    /// Health of the target in a slot, nil when unused.
    public func health(ofSlot s: Int) -> TargetHealth? {
        guard s >= 0, s < slotCount else { return nil }
        return TargetHealth(rawValue: state[s])
    }

    /// Requests in flight on a slot (0 when unused).
    public func inFlight(slot s: Int) -> Int {
        guard s >= 0, s < slotCount else { return 0 }
        return inFlightCount[s]
    }

    /// Registered targets, by slot.
    public var targetIDs: [String] { ids.compactMap { $0 } }
    /// One past the highest slot in use (slots below may be vacant).
    public var slotLimit: Int { slotCount }

    /// The current bounded-load cap of a slot: ceil(c·(T+1)·w/W) over the healthy targets (T in flight).
    public func loadCap(slot s: Int) -> Int {
        guard s >= 0, s < slotCount, healthyWeight > 0 else { return 0 }
        // ceil(cFixed·(T+1)·w / (65536·W)), computed in 128 bits.
        let num = UInt64(healthyInFlight + 1).multipliedFullWidth(by: cFixed)
        guard num.high == 0 else { return Int.max }
        let prod = num.low.multipliedFullWidth(by: UInt64(weight[s]))
        let den = healthyWeight << 16
        guard prod.high < den else { return Int.max }
        let (q, r) = den.dividingFullWidth(prod)
        let c = r == 0 ? q : q + 1
        return c > UInt64(Int.max) ? Int.max : Int(c)
    }

    /// Recomputes the derived state after a target was added, removed or changed health: whether all weights
    /// are equal, and the packed array of healthy seeds.
    private func membershipChanged() {
        var first: UInt32 = 0
        var uniform = true
        var hot = 0
        var i = 0
        while i < slotCount {
            if state[i] != Router.vacant {
                if first == 0 { first = weight[i] } else if weight[i] != first { uniform = false }
            }
            if state[i] == Router.healthyRaw {
                hotSeed[hot] = seed[i]
                hotSeed2[hot] = seed2[i]
                hotSlot[hot] = i
                hot += 1
            }
            i += 1
        }
        uniformWeights = uniform
        hotCount = hot
    }

    // MARK: - Admission

    /// Chooses a target for a request and counts it in flight there.
    ///  - session: the session key (X-Session-Id, else body `session_id`, else `user`); used by consistent-hash.
    ///  - peer: the client's identity; used by client-hash.
    /// Keyless requests under a hashing policy are routed by least-connections.
    @inlinable
    public func admit(session: String?, peer: PeerIdentity = .unknown) -> Admission {
        let h: UInt64?
        switch policy {
        case .consistentHash: h = session.map(RouteHash.string)
        case .clientHash: h = peer.routingHash
        case .roundRobin, .leastConnections: h = nil
        }
        return admit(keyHash: h)
    }

    /// Same as `admit(session:peer:)` with the key already hashed (RouteHash.bytes / .string / peer hash),
    /// e.g. straight from a header buffer. Round-robin and least-connections ignore the key.
    public func admit(keyHash: UInt64?) -> Admission {
        guard healthyCount > 0 else { return .unavailable }
        var chosen = -1
        switch policy {
        case .consistentHash:
            if let k = keyHash {
                chosen = rendezvous(k, bounded: true)
                if chosen < 0 { chosen = rendezvous(k, bounded: false) }
            } else {
                chosen = leastConnections()
            }
        case .clientHash:
            if let k = keyHash { chosen = rendezvous(k, bounded: false) } else { chosen = leastConnections() }
        case .roundRobin:
            chosen = roundRobin()
        case .leastConnections:
            chosen = leastConnections()
        }
        guard chosen >= 0 else { return .overloaded }
        // Acquire: paired with the decrement in release(_:).
        inFlightCount[chosen] += 1
        totalInFlight += 1
        healthyInFlight += 1  // chosen is healthy by construction
        return .admitted(Ticket(target: chosen, generation: generation[chosen]))
    }

    /// Un-counts a finished request. Call exactly once per admitted ticket. A ticket whose target has since
    /// been removed is ignored.
    public func release(_ t: Ticket) {
        let s = t.target
        guard s >= 0, s < slotCount, state[s] != Router.vacant, generation[s] == t.generation,
            inFlightCount[s] > 0
        else { return }
        inFlightCount[s] -= 1
        totalInFlight -= 1
        if state[s] == Router.healthyRaw { healthyInFlight -= 1 }
    }

    /// The key's home: its highest-ranked healthy target regardless of load (nil when none is healthy).
    public func home(keyHash k: UInt64) -> Int? {
        let s = rendezvousIgnoringLoad(k)
        return s >= 0 ? s : nil
    }

    /// The key's full ranking (all registered slots, best first, health ignored). Allocates; for diagnostics.
    public func ranking(keyHash k: UInt64) -> [Int] {
        var slots: [(Int, Double, UInt64)] = []
        var i = 0
        while i < slotCount {
            if state[i] != Router.vacant {
                let h = Router.score(k, seed[i], seed2[i], tag: i + 1)
                slots.append((i, uniformWeights ? 0 : Router.weightedScore(Router.raw(k, seed[i], seed2[i]), weightF[i]), h))
            }
            i += 1
        }
        if uniformWeights {
            slots.sort { $0.2 > $1.2 }
        } else {
            slots.sort { $0.1 > $1.1 }
        }
        return slots.map(\.0)
    }

    // MARK: - Policies (each returns a healthy slot with room, or -1)

    @inline(__always)
    static func secondSeed(_ a: UInt64) -> UInt64 { RouteHash.mix64(a ^ 0x5357_4954_4348_5244) }

    /// Raw rendezvous value of key hash k for a target with seeds (a, b): mum(k ^ a, k ^ b), i.e. the high
    /// and low halves of the 128-bit product xor-ed (wyhash's mixing step; one multiply per target).
    @inline(__always)
    static func raw(_ k: UInt64, _ a: UInt64, _ b: UInt64) -> UInt64 {
        let r = (k ^ a).multipliedFullWidth(by: k ^ b)
        return r.high ^ r.low
    }

    /// Packed rendezvous score: the top 48 bits of `raw`, with `tag` (slot + 1, 1 ... 4096) in the low 16
    /// bits. A plain max() over packed scores yields the winner's tag, ties of the 48-bit scores (probability
    /// ~2^-48 per pair) go to the higher slot, and 0 can mean "ineligible".
    @inline(__always)
    static func score(_ k: UInt64, _ a: UInt64, _ b: UInt64, tag: Int) -> UInt64 {
        (raw(k, a, b) & ~0xFFFF) | UInt64(truncatingIfNeeded: tag)
    }

    /// Weighted rendezvous score w / -ln(u), u in (0, 1) from the top 53 bits of the hash.
    @inline(__always)
    private static func weightedScore(_ h: UInt64, _ w: Double) -> Double {
        let u = (Double(h >> 11) + 0.5) * 0x1p-53
        return w / -log(u)
    }

    /// Highest-ranked healthy slot with in_flight < capacity and, if `bounded`, in_flight < load cap.
    private func rendezvous(_ k: UInt64, bounded: Bool) -> Int {
        let n = slotCount
        var best = -1
        if uniformWeights {
            // Equal weights: the cap is the same for every target, computed once.
            // Fast path: the best healthy target (packed seeds, no per-slot checks); usually it has room.
            // Unrolled by 4 with independent maxima so the multiplies of neighbouring targets overlap.
            var t0: UInt64 = 0, t1: UInt64 = 0, t2: UInt64 = 0, t3: UInt64 = 0
            let m = hotCount
            var j = 0
            while j &+ 4 <= m {
                t0 = max(t0, Router.score(k, hotSeed[j], hotSeed2[j], tag: j &+ 1))
                t1 = max(t1, Router.score(k, hotSeed[j &+ 1], hotSeed2[j &+ 1], tag: j &+ 2))
                t2 = max(t2, Router.score(k, hotSeed[j &+ 2], hotSeed2[j &+ 2], tag: j &+ 3))
                t3 = max(t3, Router.score(k, hotSeed[j &+ 3], hotSeed2[j &+ 3], tag: j &+ 4))
                j &+= 4
            }
            while j < m {
                t0 = max(t0, Router.score(k, hotSeed[j], hotSeed2[j], tag: j &+ 1))
                j &+= 1
            }
            let top = max(max(t0, t1), max(t2, t3))
            guard top != 0 else { return -1 }
            let home = hotSlot[Int(truncatingIfNeeded: top & 0xFFFF) - 1]
            let f = inFlightCount[home]
            if f < limit[home] && (!bounded || underCapUniform(f)) { return home }
            let cap = bounded ? loadCapUniform() : Int.max
            // Slow path: highest-ranked slot with room. Branch-free body: an ineligible slot scores 0 and every
            // packed score is >= 1. Ties order by slot in both scans, so both agree on the ranking.
            var bestScore: UInt64 = 0
            var i = 0
            while i < n {
                let s = Router.score(k, seed[i], seed2[i], tag: i + 1)
                let ok = inFlightCount[i] < min(limit[i], cap)
                bestScore = max(bestScore, ok ? s : 0)
                i += 1
            }
            if bestScore != 0 { best = Int(truncatingIfNeeded: bestScore & 0xFFFF) - 1 }
        } else {
            var bestScore = -Double.infinity
            var i = 0
            while i < n {
                let f = inFlightCount[i]
                if state[i] == Router.healthyRaw && f < capacity[i] && (!bounded || f < loadCap(slot: i)) {
                    let s = Router.weightedScore(Router.raw(k, seed[i], seed2[i]), weightF[i])
                    if best < 0 || s > bestScore {
                        bestScore = s
                        best = i
                    }
                }
                i += 1
            }
        }
        return best
    }

    private func rendezvousIgnoringLoad(_ k: UInt64) -> Int {
        let n = slotCount
        var best = -1
        var bestU: UInt64 = 0
        var bestW = -Double.infinity
        var i = 0
        while i < n {
            if state[i] == Router.healthyRaw {
                let s = Router.score(k, seed[i], seed2[i], tag: i + 1)
                if uniformWeights {
                    if best < 0 || s > bestU { bestU = s; best = i }
                } else {
                    let w = Router.weightedScore(Router.raw(k, seed[i], seed2[i]), weightF[i])
                    if best < 0 || w > bestW { bestW = w; best = i }
                }
            }
            i += 1
        }
        return best
    }

    /// f < ceil(c·(T+1)/N) without a division: for integer f that is f < c·(T+1)/N, i.e.
    /// f·N·65536 < cFixed·(T+1) (overflow means "huge cap": true).
    @inline(__always)
    private func underCapUniform(_ f: Int) -> Bool {
        let lhs = UInt64(f).multipliedReportingOverflow(by: UInt64(healthyCount) << 16)
        let rhs = UInt64(healthyInFlight + 1).multipliedReportingOverflow(by: cFixed)
        if rhs.overflow { return true }
        return !lhs.overflow && lhs.partialValue < rhs.partialValue
    }

    /// ceil(c·(T+1)/N) over healthy targets, exact (c in 1/65536 units).
    @inline(__always)
    private func loadCapUniform() -> Int {
        let num = UInt64(healthyInFlight + 1).multipliedReportingOverflow(by: cFixed)
        guard !num.overflow else { return Int.max }
        let den = UInt64(healthyCount) << 16
        let c = (num.partialValue + den - 1) / den
        return c > UInt64(Int.max) ? Int.max : Int(c)
    }

    /// Fewest in flight per unit of weight among healthy slots with room; ties go to the first at or after
    /// the round-robin cursor, which then moves past the chosen slot.
    private func leastConnections() -> Int {
        let n = slotCount
        guard n > 0 else { return -1 }
        var best = -1
        var bestF = 0
        var bestW = 1
        var j = 0
        var i = cursor < n ? cursor : 0
        while j < n {
            let f = inFlightCount[i]
            if state[i] == Router.healthyRaw && f < capacity[i] {
                let w = Int(weight[i])
                // f/w < bestF/bestW  <=>  f·bestW < bestF·w (weights <= 65535, counts < 2^47: no overflow)
                if best < 0 || f &* bestW < bestF &* w {
                    best = i
                    bestF = f
                    bestW = w
                }
            }
            j += 1
            i += 1
            if i == n { i = 0 }
        }
        if best >= 0 { cursor = best + 1 == n ? 0 : best + 1 }
        return best
    }

    /// Round-robin over healthy slots with room: plain rotation for equal weights, otherwise smooth weighted
    /// round-robin (each eligible slot gains its weight, the largest running value wins and pays the total).
    private func roundRobin() -> Int {
        let n = slotCount
        guard n > 0 else { return -1 }
        if uniformWeights {
            var j = 0
            var i = cursor < n ? cursor : 0
            while j < n {
                if state[i] == Router.healthyRaw && inFlightCount[i] < capacity[i] {
                    cursor = i + 1 == n ? 0 : i + 1
                    return i
                }
                j += 1
                i += 1
                if i == n { i = 0 }
            }
            return -1
        }
        var best = -1
        var total = 0
        var i = 0
        while i < n {
            if state[i] == Router.healthyRaw && inFlightCount[i] < capacity[i] {
                swrrCurrent[i] += Int(weight[i])
                total += Int(weight[i])
                if best < 0 || swrrCurrent[i] > swrrCurrent[best] { best = i }
            }
            i += 1
        }
        if best >= 0 { swrrCurrent[best] -= total }
        return best
    }
}
