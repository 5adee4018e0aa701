// Lookup tables for the byte-level BPE tokenizer: GPT-2's byte <-> code point map and an
// open-addressing hash table for merges keyed by integer symbol pairs.

/// GPT-2's reversible byte-to-unicode map: printable Latin-1 bytes ('!'...'~', '¡'...'¬', '®'...'ÿ')
/// stand for themselves; the other 68 bytes (controls, space, 0x7F-0xA0, 0xAD) are mapped in order to
/// U+0100, U+0101, ... (so ' ' = 0x20 becomes U+0120 'Ġ', '\n' becomes U+010A 'Ċ').
enum ByteLevel {
    /// Code point standing for each byte.
    static let byteToScalar: [UInt32] = {
        var map = [UInt32](repeating: 0, count: 256)
        var printable = [Bool](repeating: false, count: 256)
        for b in 0x21...0x7E { printable[b] = true }
        for b in 0xA1...0xAC { printable[b] = true }
        for b in 0xAE...0xFF { printable[b] = true }
        var n: UInt32 = 0
        for b in 0..<256 {
            if printable[b] { map[b] = UInt32(b) } else { map[b] = 256 + n; n += 1 }
        }
        return map
    }()

    /// Inverse map indexed by code point (< 324); -1 where a code point stands for no byte.
    static let scalarToByte: [Int16] = {
        var inv = [Int16](repeating: -1, count: 324)
        for b in 0..<256 { inv[Int(byteToScalar[b])] = Int16(b) }
        return inv
    }()

    /// The byte a code point of a token's text stands for, or nil.
    @inline(__always) static func byte(for scalar: UInt32) -> UInt8? {
        guard scalar < 324 else { return nil }
        let b = scalarToByte[Int(scalar)]
        return b < 0 ? nil : UInt8(b)
    }

    /// The byte-level text of raw bytes (what a vocabulary entry looks like).
    static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var s = String.UnicodeScalarView()
        for b in bytes { if let u = Unicode.Scalar(byteToScalar[Int(b)]) { s.append(u) } }
        return String(s)
    }
}

/// BPE merges: (left symbol id, right symbol id) -> (rank, merged symbol id), as an open-addressing
/// hash table with linear probing. Keys are `left << 32 | right`; symbol ids are < 2^31, so the
/// all-ones key never occurs and marks an empty slot. Capacity is a power of two at least twice
/// the entry count, so probes stay short and always reach an empty slot.
struct MergeTable: Sendable {
    private var keys: [UInt64]
    private var values: [UInt64]      // rank << 32 | merged id
    private let mask: Int
    private(set) var count = 0
    private static let empty = UInt64.max

    init(expected: Int) {
        var cap = 16
        while cap < expected * 2 { cap <<= 1 }
        keys = [UInt64](repeating: Self.empty, count: cap)
        values = [UInt64](repeating: 0, count: cap)
        mask = cap - 1
    }

    @inline(__always) private static func slot(_ key: UInt64, _ mask: Int) -> Int {
        // Fibonacci hashing: the high bits of key * 2^64/phi are well mixed.
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    /// Inserts unless the pair is already present (the first, lowest-rank merge wins, as with
    /// llama.cpp's bpe_ranks.emplace).
    mutating func insertIfAbsent(left: Int32, right: Int32, rank: Int32, merged: Int32) {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        var i = Self.slot(key, mask)
        while keys[i] != Self.empty {
            if keys[i] == key { return }
            i = (i + 1) & mask
        }
        keys[i] = key
        values[i] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: merged))
        count += 1
    }

    /// (rank, merged id) for the pair, or nil when the pair never merges.
    @inline(__always) func lookup(_ left: Int32, _ right: Int32) -> (rank: Int32, merged: Int32)? {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        return keys.withUnsafeBufferPointer { k in
            var i = Self.slot(key, mask)
            while true {
                let x = k[i]
                if x == key {
                    let v = values[i]
                    return (Int32(truncatingIfNeeded: v >> 32), Int32(truncatingIfNeeded: v))
                }
                if x == Self.empty { return nil }
                i = (i + 1) & mask
            }
        }
    }
}
