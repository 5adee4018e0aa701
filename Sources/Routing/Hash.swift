// Fixed, seedless 64-bit hashing for routing.
//
// Routing must map the same key to the same worker across restarts and machines, so nothing here has a
// per-process random seed (unlike Swift's `Hasher`). Two functions are defined, and their exact outputs are
// part of the routing contract (changing them re-homes every session):
//
//   RouteHash.bytes(_:)  "wyhash-style" string hash. The input is consumed in 16-byte blocks (two
//                        little-endian UInt64 words a, b); each block folds into the state with one 64x64->128
//                        multiply: h = mum(a ^ P1, b ^ h), where mum(x, y) = high64(x*y) ^ low64(x*y). The tail
//                        (< 16 bytes) is zero-padded into a final block. The length is mixed in at the start and
//                        the result goes through `mix64` so every output bit depends on every input bit.
//   RouteHash.mix64(_:)  the SplitMix64 / Stafford "variant 13" finalizer, a bijection on UInt64 with full
//                        avalanche. Rendezvous scores are mix64(keyHash ^ targetSeed).
//
// Constants are the first four 64-bit primes used by wyhash (public domain); the code is ours.
public enum RouteHash {
    @usableFromInline static let p0: UInt64 = 0xa076_1d64_78bd_642f
    @usableFromInline static let p1: UInt64 = 0xe703_7ed1_a0b4_28db
    @usableFromInline static let p2: UInt64 = 0x8ebc_6af0_9c88_c6e3
    @usableFromInline static let p3: UInt64 = 0x5899_65cc_7537_4cc3

    /// high64(a*b) ^ low64(a*b).
    @inlinable @inline(__always)
    static func mum(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let r = a.multipliedFullWidth(by: b)
        return r.high ^ r.low
    }

    /// SplitMix64 finalizer (Stafford variant 13): a bijection with full avalanche.
    @inlinable @inline(__always)
    public static func mix64(_ x0: UInt64) -> UInt64 {
        var x = x0
        x = (x ^ (x >> 30)) &* 0xbf58_476d_1ce4_e5b9
        x = (x ^ (x >> 27)) &* 0x94d0_49bb_1331_11eb
        return x ^ (x >> 31)
    }

    /// Hash of a byte string (see the file comment for the exact definition). Never reads outside `buf`.
    @inlinable
    public static func bytes(_ buf: UnsafeRawBufferPointer) -> UInt64 {
        let n = buf.count
        var h = p0 ^ (UInt64(truncatingIfNeeded: n) &* p1)
        var i = 0
        // Full 16-byte blocks: i + 16 <= n, so both 8-byte loads are in bounds.
        while i &+ 16 <= n {
            let a = UInt64(littleEndian: buf.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            let b = UInt64(littleEndian: buf.loadUnaligned(fromByteOffset: i &+ 8, as: UInt64.self))
            h = mum(a ^ p1, b ^ h)
            i &+= 16
        }
        let rest = n &- i  // 0 ..< 16 bytes left
        if rest > 0 {
            var a: UInt64 = 0
            var b: UInt64 = 0
            if rest >= 8 {
                a = UInt64(littleEndian: buf.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                var k = 0
                while i &+ 8 &+ k < n {  // little-endian byte order, same as a full load would give
                    b |= UInt64(buf[i &+ 8 &+ k]) << UInt64(8 &* k)
                    k &+= 1
                }
            } else {
                var k = 0
                while i &+ k < n {
                    a |= UInt64(buf[i &+ k]) << UInt64(8 &* k)
                    k &+= 1
                }
            }
            h = mum(a ^ p2, b ^ h)
        }
        return mix64(mum(h ^ p3, UInt64(truncatingIfNeeded: n) ^ p0))
    }

    /// Hash of a string's UTF-8 bytes. Native Swift strings are contiguous UTF-8, so this does not allocate;
    /// bridged or non-contiguous strings are copied once.
    @inlinable
    public static func string(_ s: String) -> UInt64 {
        if let h = s.utf8.withContiguousStorageIfAvailable({ bytes(UnsafeRawBufferPointer($0)) }) {
            return h
        }
        var copy = s
        copy.makeContiguousUTF8()
        return copy.utf8.withContiguousStorageIfAvailable({ bytes(UnsafeRawBufferPointer($0)) }) ?? 0
    }

    /// Hash of a byte array.
    @inlinable
    public static func bytes(_ a: [UInt8]) -> UInt64 {
        a.withUnsafeBytes { bytes($0) }
    }
}
