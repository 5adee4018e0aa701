// The front's tables keyed by request id (the loop's owner of each request, the pool's in-flight entries).
// A Dictionary<UInt64, _> hashes every key with SipHash; these tables are touched several times per
// request on the event loop, and their keys are ids the front hands out itself, one after the other, so a
// multiplicative (Fibonacci) hash spreads them as well as any: one multiply instead of a SipHash round.
// Open addressing with linear probing; deletion shifts the following entries back (no tombstones, so
// lookups never slow down as requests come and go); the table doubles when it is half full.

struct RequestTable<Value> {
    /// 0 marks an empty slot: request ids start at 1.
    private var keys: [UInt64]
    private var values: [Value?]
    private var shift: UInt64          // 64 - log2(capacity)
    private(set) var count = 0

    init(capacity: Int = 64) {
        var n = 16
        while n < capacity * 2 { n *= 2 }
        keys = [UInt64](repeating: 0, count: n)
        values = [Value?](repeating: nil, count: n)
        shift = UInt64(64 - n.trailingZeroBitCount)
    }

    var isEmpty: Bool { count == 0 }

    @inline(__always) private func home(_ id: UInt64) -> Int {
        Int(truncatingIfNeeded: (id &* 0x9E37_79B9_7F4A_7C15) >> shift)
    }

    /// The slot holding `id`, if present.
    private func find(_ id: UInt64) -> Int? {
        let mask = keys.count - 1
        var i = home(id)
        while true {
            let k = keys[i]
            if k == id { return i }
            if k == 0 { return nil }
            i = (i + 1) & mask
        }
    }

    subscript(id: UInt64) -> Value? {
        get {
            guard let i = find(id) else { return nil }
            return values[i]
        }
        set {
            if let newValue { insert(id, newValue) } else { removeValue(forKey: id) }
        }
    }

    /// Runs `body` on the value of `id` in place (no copy out and back); nil when `id` is absent.
    mutating func update<R>(_ id: UInt64, _ body: (inout Value) -> R) -> R? {
        guard let i = find(id) else { return nil }
        return body(&values[i]!)
    }

    private mutating func insert(_ id: UInt64, _ value: Value) {
        precondition(id != 0, "request id 0 is reserved")
        if let i = find(id) { values[i] = value; return }
        if (count + 1) * 2 > keys.count { grow() }
        let mask = keys.count - 1
        var i = home(id)
        while keys[i] != 0 { i = (i + 1) & mask }
        keys[i] = id
        values[i] = value
        count += 1
    }

    @discardableResult
    mutating func removeValue(forKey id: UInt64) -> Value? {
        guard var hole = find(id) else { return nil }
        let removed = values[hole]
        let mask = keys.count - 1
        // Backward shift: move each following entry of the run into the hole when its home slot does not
        // lie (cyclically) between the hole and where it sits, so every entry stays reachable from its home.
        var j = hole
        while true {
            j = (j + 1) & mask
            let k = keys[j]
            if k == 0 { break }
            let h = home(k)
            let reachable = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j)
            if !reachable {
                keys[hole] = k
                values[hole] = values[j]
                hole = j
            }
        }
        keys[hole] = 0
        values[hole] = nil
        count -= 1
        return removed
    }

    mutating func removeAll() {
        for i in keys.indices { keys[i] = 0; values[i] = nil }
        count = 0
    }

    /// The ids present whose value satisfies `predicate`, in no particular order (for rare whole-table
    /// passes such as a worker's death).
    func ids(where predicate: (Value) -> Bool) -> [UInt64] {
        var out: [UInt64] = []
        for i in keys.indices where keys[i] != 0 && predicate(values[i]!) { out.append(keys[i]) }
        return out
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values
        let n = keys.count * 2
        keys = [UInt64](repeating: 0, count: n)
        values = [Value?](repeating: nil, count: n)
        shift -= 1
        count = 0
        for i in oldKeys.indices where oldKeys[i] != 0 { insert(oldKeys[i], oldValues[i]!) }
    }
}
