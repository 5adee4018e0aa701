/// Deterministic self-checking records for ring stress tests and the ring-peer test process: record `seq`
/// has a size, type and content derived from (`seed`, `seq`); the payload starts with the sequence number
/// and a checksum of the rest, so loss, duplication, reordering, truncation and corruption are all caught.
///
/// Payload layout: `[seq: u64][checksum: u64][body: size - 16 bytes]`, size in `minSize...maxSize`.
public struct RingStressPattern: Sendable {
    public static let minSize = 16
    public let seed: UInt64
    public let maxSize: Int

    public init(seed: UInt64, maxSize: Int = 200) {
        self.seed = seed
        self.maxSize = max(Self.minSize, maxSize)
    }

    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        // splitmix64 finalizer
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    @inline(__always)
    public func size(of seq: UInt64) -> Int {
        Self.minSize + Int(Self.mix(seq ^ seed) % UInt64(maxSize - Self.minSize + 1))
    }

    @inline(__always)
    public func type(of seq: UInt64) -> UInt16 { UInt16(truncatingIfNeeded: seq & 0x7FFF) }

    /// Fills `payload` (exactly `size(of: seq)` bytes) with record `seq`.
    @inline(__always)
    public func fill(_ payload: UnsafeMutableRawBufferPointer, seq: UInt64) {
        guard let base = payload.baseAddress, payload.count >= Self.minSize else { return }
        var x = Self.mix(seq &+ seed)
        var offset = 16
        while offset + 8 <= payload.count {
            base.storeBytes(of: x, toByteOffset: offset, as: UInt64.self)
            x = x &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            offset += 8
        }
        while offset < payload.count {
            base.storeBytes(of: UInt8(truncatingIfNeeded: x), toByteOffset: offset, as: UInt8.self)
            x >>= 8
            offset += 1
        }
        base.storeBytes(of: seq, toByteOffset: 0, as: UInt64.self)
        base.storeBytes(of: Self.checksum(UnsafeRawBufferPointer(rebasing: payload[16...])), toByteOffset: 8, as: UInt64.self)
    }

    @inline(__always)
    static func checksum(_ body: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        var offset = 0
        while offset + 8 <= body.count {
            h = (h ^ body.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) &* 0x0000_0100_0000_01B3
            h ^= h >> 29
            offset += 8
        }
        while offset < body.count {
            h = (h ^ UInt64(body[offset])) &* 0x0000_0100_0000_01B3
            offset += 1
        }
        return h
    }

    /// Why record `payload` of `type` is not record `seq`, or nil if it is.
    public func verify(seq: UInt64, type: UInt16, payload: UnsafeRawBufferPointer) -> String? {
        let expected = size(of: seq)
        guard payload.count == expected else { return "record \(seq): size \(payload.count), expected \(expected)" }
        let got = payload.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
        guard got == seq else { return "record \(seq): got sequence number \(got)" }
        guard type == self.type(of: seq) else { return "record \(seq): type \(type), expected \(self.type(of: seq))" }
        let sum = payload.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        guard sum == Self.checksum(UnsafeRawBufferPointer(rebasing: payload[16...])) else {
            return "record \(seq): checksum mismatch"
        }
        return nil
    }
}

/// The two halves of a stress run, shared by the tests and the `switchyard ring-peer` test process.
public enum RingStress {
    /// Sends records 0..<count of `pattern`, committing every `batch` records, then closes the producer
    /// (unless `close` is false).
    public static func send(_ tx: RingProducer, pattern: RingStressPattern, count: UInt64, batch: Int = 16,
                            close: Bool = true) throws(RingError) {
        var seq: UInt64 = 0
        while seq < count {
            let size = pattern.size(of: seq)
            let buffer = try tx.reserve(type: pattern.type(of: seq), length: size)
            pattern.fill(buffer, seq: seq)
            seq += 1
            if seq % UInt64(batch) == 0 { tx.commit() }
        }
        tx.commit()
        if close { tx.close() }
    }

    /// Receives and verifies records 0..<count of `pattern`, then expects the producer to close with
    /// nothing more in the ring. Returns nil on success or the first problem found.
    public static func receive(_ rx: RingConsumer, pattern: RingStressPattern, count: UInt64,
                               expectClose: Bool = true) throws(RingError) -> String? {
        var next: UInt64 = 0
        var failure: String?
        while next < count {
            try rx.waitForData()
            try rx.drain { type, payload in
                if failure == nil, let problem = pattern.verify(seq: next, type: type, payload: payload) {
                    failure = problem
                }
                next += 1
            }
            if let failure { return failure }
        }
        guard expectClose else { return nil }
        do {
            try rx.waitForData(timeoutNanoseconds: 10_000_000_000)
            var extra = 0
            try rx.drain { _, _ in extra += 1 }
            return "\(extra) record(s) after the last expected one"
        } catch .closed {
            return nil
        }
    }
}
