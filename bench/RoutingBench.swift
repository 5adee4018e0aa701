// `switchyard-bench routing`: distribution, movement and pick() latency of every routing policy.
//
// How pick time is measured: one "pick" is RouteHash.bytes over a 36-byte UUID-like session id (the way the
// front hashes the X-Session-Id bytes in its request buffer; ids are stored back to back in one flat buffer
// and visited in order) + `Router.admit(keyHash:)` + `release` of the ticket (keeping the load state steady).
// client-hash picks hash the peer (`PeerIdentity.unix(uid:)`) instead. Picks run in batches of 64; each batch is timed with two clock_gettime(CLOCK_MONOTONIC) calls and
// its duration / 64 is one sample. pick_ns_p50 / p99 are percentiles over those per-batch samples; the
// timer's own cost (one empty batch ≈ two clock reads) is reported separately, not subtracted.
import ArgumentParser
import Foundation
import Routing

#if canImport(Glibc)
import Glibc
#endif

struct RoutingBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "routing",
        abstract: "Key distribution, movement on membership change and pick() latency per routing policy."
    )

    @Option(name: .long, help: "Number of targets.") var workers: Int = 64
    @Option(name: .long, help: "Number of random session keys.") var keys: Int = 1_000_000
    @Option(name: .long, help: "Write results as JSON to PATH ('-' for stdout).") var json: String?
    @Option(name: .long, help: "Seed of the key generator.") var seed: UInt64 = 1

    func validate() throws {
        guard workers >= 2, workers <= 4096 else { throw ValidationError("--workers must be 2 ... 4096") }
        guard keys >= 1000, keys <= 100_000_000 else { throw ValidationError("--keys must be 1000 ... 10^8") }
    }

    struct Variant {
        let name: String
        let policy: RoutingPolicy
        let weighted: Bool
    }

    func run() throws {
        let variants = [
            Variant(name: "consistent-hash", policy: .consistentHash, weighted: false),
            Variant(name: "consistent-hash-weighted", policy: .consistentHash, weighted: true),
            Variant(name: "round-robin", policy: .roundRobin, weighted: false),
            Variant(name: "least-connections", policy: .leastConnections, weighted: false),
            Variant(name: "client-hash", policy: .clientHash, weighted: false),
        ]
        // Keys: session-id-like strings, plus one uid per key for client-hash.
        var rng = BenchRNG(seed: seed)
        var sessions: [String] = []
        var flat: [UInt8] = []
        flat.reserveCapacity(keys * 36)
        var uids: [UInt32] = []
        sessions.reserveCapacity(keys)
        uids.reserveCapacity(keys)
        for _ in 0..<keys {
            let v = rng.next()
            let id = uuidLike(v, rng.next())
            sessions.append(id)
            flat.append(contentsOf: Array(id.utf8))
            uids.append(UInt32(truncatingIfNeeded: v >> 32))
        }
        let timerOverhead = measureTimerOverhead()
        var rows: [[String: Any]] = []
        let human = json != "-"
        if human {
            print("routing bench: \(workers) workers, \(keys) keys, seed \(seed); pick = hash 36-byte id + admit + release, "
                + "batches of 64 timed with clock_gettime (timer ≈ \(fmt(timerOverhead)) ns/batch, not subtracted)")
            print(pad("policy", 26) + pad("max_share×N", 13) + pad("moved_on_rm", 13) + pad("owned_by_rm", 13)
                + pad("between_surv", 14) + pad("p50 ns", 9) + pad("p99 ns", 9) + "mean ns")
        }
        for v in variants {
            let specs = (0..<workers).map { i in
                TargetSpec(id: "w\(i)", weight: v.weighted ? UInt32(1 + i % 4) : 1)
            }
            // 1. Distribution with all workers healthy (sequential admit+release, so load-based policies
            //    see an idle cluster each time, as hashing policies do).
            let r1 = try Router(policy: v.policy, targets: specs)
            let before = assign(r1, sessions, uids)
            var count = [Int](repeating: 0, count: workers)
            for t in before { count[t] += 1 }
            // Weighted: compare each share to its weight's fair share.
            let totalW = Double(specs.reduce(0) { $0 + Int($1.weight) })
            var maxRatio = 0.0
            for i in 0..<workers {
                let fair = Double(specs[i].weight) / totalW
                maxRatio = max(maxRatio, Double(count[i]) / Double(keys) / fair)
            }
            // 2. Remove the middle worker from a fresh router (same starting state) and re-assign.
            let removed = workers / 2
            let r2 = try Router(policy: v.policy, targets: specs)
            try r2.removeTarget(id: "w\(removed)")
            let after = assign(r2, sessions, uids)
            var moved = 0
            var between = 0
            for i in 0..<keys where before[i] != after[i] {
                moved += 1
                if before[i] != removed { between += 1 }
            }
            // 3. pick() latency.
            let r3 = try Router(policy: v.policy, targets: specs)
            let (p50, p99, mean) = timePicks(r3, flat, uids, clientHash: v.policy == .clientHash)
            let row: [String: Any] = [
                "policy": v.name,
                "workers": workers,
                "keys": keys,
                "max_share_times_n": maxRatio,
                "moved_fraction_on_remove": Double(moved) / Double(keys),
                "owned_fraction_of_removed": Double(count[removed]) / Double(keys),
                "moved_between_survivors": Double(between) / Double(keys),
                "pick_ns_p50": p50,
                "pick_ns_p99": p99,
                "pick_ns_mean": mean,
            ]
            rows.append(row)
            if human {
                print(pad(v.name, 26) + pad(fmt(maxRatio, 4), 13) + pad(fmt(Double(moved) / Double(keys), 4), 13)
                    + pad(fmt(Double(count[removed]) / Double(keys), 4), 13)
                    + pad(fmt(Double(between) / Double(keys), 4), 14) + pad(fmt(p50), 9) + pad(fmt(p99), 9)
                    + fmt(mean))
            }
        }
        if let path = json {
            let doc: [String: Any] = [
                "bench": "routing",
                "workers": workers,
                "keys": keys,
                "seed": seed,
                "pick_method": "RouteHash.bytes(36-byte session id) + admit(keyHash:) + release per pick; batches of 64 picks timed "
                    + "with clock_gettime(CLOCK_MONOTONIC); percentiles over per-batch mean ns/pick",
                "timer_overhead_ns_per_batch": timerOverhead,
                "policies": rows,
            ]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
            if path == "-" {
                FileHandle.standardOutput.write(data)
                print()
            } else {
                try data.write(to: URL(fileURLWithPath: path))
            }
        }
    }

    /// Target of every key, admitting and immediately releasing each.
    func assign(_ r: Router, _ sessions: [String], _ uids: [UInt32]) -> [Int] {
        var out = [Int](repeating: -1, count: sessions.count)
        for i in 0..<sessions.count {
            if let t = r.admit(session: sessions[i], peer: .unix(uid: uids[i])).ticket {
                out[i] = t.target
                r.release(t)
            }
        }
        return out
    }

    func timePicks(_ r: Router, _ flat: [UInt8], _ uids: [UInt32], clientHash: Bool) -> (Double, Double, Double) {
        let batch = 64
        let n = uids.count
        let batches = max(20_000, n / batch)
        var samples = [Double](repeating: 0, count: batches)
        var sink = 0
        return flat.withUnsafeBytes { buf in
            // One pick: hash the key bytes (or the peer), admit, release.
            @inline(__always) func pick(_ j: Int) {
                let h = clientHash
                    ? PeerIdentity.unix(uid: uids[j]).routingHash
                    : RouteHash.bytes(UnsafeRawBufferPointer(rebasing: buf[(j * 36)..<(j * 36 + 36)]))
                if let t = r.admit(keyHash: h).ticket {
                    sink &+= t.target
                    r.release(t)
                }
            }
            for j in 0..<min(n, 100_000) { pick(j) }  // warm-up
            var k = 0
            var total = 0.0
            for b in 0..<batches {
                if k + batch > n { k = 0 }
                let t0 = nowNs()
                for j in k..<(k + batch) { pick(j) }
                let t1 = nowNs()
                k += batch
                samples[b] = Double(t1 - t0) / Double(batch)
                total += Double(t1 - t0)
            }
            if sink == -1 { print("") }  // keep the work observable
            samples.sort()
            let p50 = samples[Int(Double(batches - 1) * 0.50)]
            let p99 = samples[Int(Double(batches - 1) * 0.99)]
            return (p50, p99, total / Double(batches * batch))
        }
    }

    func measureTimerOverhead() -> Double {
        var s = [Double]()
        for _ in 0..<10_000 {
            let a = nowNs()
            let b = nowNs()
            s.append(Double(b - a))
        }
        s.sort()
        return s[s.count / 2]
    }
}

@inline(__always)
private func nowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

private func fmt(_ x: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", x) }
private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }

/// 36-character UUID-shaped session id from two random words.
func uuidLike(_ a: UInt64, _ b: UInt64) -> String {
    func hex(_ v: UInt64, _ digits: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, digits - s.count)) + s.suffix(digits)
    }
    return hex(a >> 32, 8) + "-" + hex((a >> 16) & 0xFFFF, 4) + "-" + hex(a & 0xFFFF, 4) + "-"
        + hex(b >> 48, 4) + "-" + hex(b & 0xFFFF_FFFF_FFFF, 12)
}

/// SplitMix64, for reproducible keys.
struct BenchRNG {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
