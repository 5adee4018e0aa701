@testable import Routing

/// Deterministic SplitMix64 PRNG for property tests (seeded; same sequence on every run).
struct SplitMix64: RandomNumberGenerator {
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

/// Session-id-like keys ("sess-" + 16 hex digits), hashed the way the front hashes them.
func sessionKeyHashes(count: Int, seed: UInt64) -> [UInt64] {
    var rng = SplitMix64(seed: seed)
    var out = [UInt64]()
    out.reserveCapacity(count)
    for _ in 0..<count {
        let v = rng.next()
        out.append(RouteHash.string("sess-" + String(v, radix: 16)))
    }
    return out
}

func workerIDs(_ n: Int, prefix: String = "w") -> [TargetSpec] {
    (0..<n).map { TargetSpec(id: "\(prefix)\($0)") }
}

/// Shared 10^6 hashed keys (computed once per test process).
let millionKeys: [UInt64] = sessionKeyHashes(count: 1_000_000, seed: 0x5357_4954_4348)
