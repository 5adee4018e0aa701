// Self-contained (no other Wire types): the front's fuzz target compiles this file into its own module.

/// A growable byte buffer written through a raw pointer: an append is one capacity check and a copy
/// (an Array append pays ~10 ns of uniqueness and capacity bookkeeping each time, and a response is a few
/// dozen short appends). Non-copyable, so two values can never share, or free twice, one allocation.
/// Its appends are @inlinable: the front writes every response through it from another module.
public struct ByteWriter: ~Copyable {
    @usableFromInline var base: UnsafeMutableRawPointer
    @usableFromInline var capacity: Int
    @usableFromInline var written = 0
    /// Bytes written so far.
    @inlinable public var count: Int { written }

    @inlinable public init(capacity: Int = 512) {
        self.capacity = max(16, capacity)
        base = .allocate(byteCount: self.capacity, alignment: 16)
    }

    deinit { base.deallocate() }

    /// Empties the buffer, keeping its allocation.
    @inlinable public mutating func reset() { written = 0 }

    @inlinable @inline(__always) public mutating func append(_ p: UnsafeRawPointer, count n: Int) {
        if n > capacity - count { grow(n) }
        (base + written).copyMemory(from: p, byteCount: n)
        written += n
    }

    @inlinable @inline(__always) public mutating func append(_ byte: UInt8) {
        if capacity == count { grow(1) }
        base.storeBytes(of: byte, toByteOffset: written, as: UInt8.self)
        written += 1
    }

    @inlinable @inline(__always) public mutating func append(_ s: StaticString) { append(s.utf8Start, count: s.utf8CodeUnitCount) }

    /// Appends `v` in little-endian byte order (the wire records' fixed-width fields).
    @inlinable @inline(__always) public mutating func appendLittleEndian<T: FixedWidthInteger>(_ v: T) {
        let n = MemoryLayout<T>.size
        if n > capacity - count { grow(n) }
        base.storeBytes(of: v.littleEndian, toByteOffset: written, as: T.self)
        written += n
    }

    @inlinable public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if let p = bytes.baseAddress { append(p, count: bytes.count) }
    }

    @inlinable public mutating func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }

    /// Appends `v` in decimal ASCII.
    @inlinable public mutating func appendDecimal(_ v: Int) {
        if 21 > capacity - count { grow(21) }   // sign + 20 digits
        if v < 0 { base.storeBytes(of: 45, toByteOffset: written, as: UInt8.self); written += 1 }   // '-'
        var m = v.magnitude
        var digits = 1
        var t = m
        while t >= 10 { t /= 10; digits += 1 }
        var k = written + digits - 1
        repeat {
            base.storeBytes(of: UInt8(48 + m % 10), toByteOffset: k, as: UInt8.self)
            m /= 10
            k -= 1
        } while m > 0
        written += digits
    }

    /// Appends `v` (≥ 0) in lower-case hex, at least `minDigits` digits (zero-padded).
    @inlinable public mutating func appendHex(_ v: Int, minDigits: Int = 1) {
        let hex: StaticString = "0123456789abcdef"
        var digits = max(1, minDigits)
        while v >> (4 * digits) != 0 { digits += 1 }
        for d in stride(from: digits - 1, through: 0, by: -1) { append(hex.utf8Start[(v >> (4 * d)) & 15]) }
    }

    /// Calls `body` with the bytes written so far, in place.
    @inlinable public func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(start: base, count: written))
    }

    /// The bytes as a new array (cold paths and tests).
    public var bytes: [UInt8] { withBytes { Array($0) } }

    @usableFromInline @inline(never) mutating func grow(_ n: Int) {
        var c = capacity * 2
        while c - written < n { c *= 2 }
        let nb = UnsafeMutableRawPointer.allocate(byteCount: c, alignment: 16)
        nb.copyMemory(from: base, byteCount: written)
        base.deallocate()
        base = nb
        capacity = c
    }
}
