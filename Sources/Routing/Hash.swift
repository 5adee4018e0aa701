// Fixed, seedless 64-bit hashing for routing.
//
// Routing must map the same key to the same worker across restarts and machines, so nothing here has a
// per-process random seed (unlike Swift's `Hasher`). Two functions are defined, and their exact outputs are
// part of the routing contract (changing them re-homes every session):
//
//   RouteHash.bytes(_:)  "wyhash-style" string hash. h0 = P0 ^ n·P1. While more than 16 bytes remain, a
//                        16-byte block (little-endian words a, b) folds in with one 64x64->128 multiply:
//                        h = mum(a ^ P1, b ^ h), where mum(x, y) = high64(x*y) ^ low64(x*y). Then the last 16
//                        bytes of the input (overlapping, for n > 16) or the first and last 8 (8 ≤ n ≤ 16) fold
//                        in as h = mum(a ^ P2, b ^ h); 1 ... 7 bytes are zero-padded into a, with b = 0.
//                        Result: mix64(mum(h ^ P3, n ^ P0)), so every output bit depends on every input bit.
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
        @inline(__always) func load64(_ off: Int) -> UInt64 {
            UInt64(littleEndian: buf.loadUnaligned(fromByteOffset: off, as: UInt64.self))
        }
        if n > 16 {
            // Full blocks while more than 16 bytes remain; the last 1 ... 16 bytes are read as the final 16
            // bytes of the buffer (overlapping the previous block), so there is no byte loop.
            var i = 0
            while n &- i > 16 {
                h = mum(load64(i) ^ p1, load64(i &+ 8) ^ h)
                i &+= 16
            }
            h = mum(load64(n &- 16) ^ p2, load64(n &- 8) ^ h)
        } else if n >= 8 {
            // 8 ... 16 bytes: first and last 8 (overlapping when n < 16).
            h = mum(load64(0) ^ p2, load64(n &- 8) ^ h)
        } else if n > 0 {
            // 1 ... 7 bytes: little-endian, zero-padded.
            var a: UInt64 = 0
            var k = 0
            while k < n {
                a |= UInt64(buf[k]) << UInt64(8 &* k)
                k &+= 1
            }
            h = mum(a ^ p2, h)
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
