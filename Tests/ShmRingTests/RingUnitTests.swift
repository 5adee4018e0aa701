import CSwitchyardSys
import Foundation
import Glibc
import ShmRing
import SysKit
import Testing

/// Byte `i` of test record `seq` (works for any size, including payloads under 16 bytes).
private func patternByte(_ seq: Int, _ i: Int) -> UInt8 { UInt8(truncatingIfNeeded: seq &* 131 &+ i &* 7 &+ (i >> 8)) }

private func fill(_ buffer: UnsafeMutableRawBufferPointer, seq: Int) {
    for i in 0..<buffer.count { buffer[i] = patternByte(seq, i) }
}

private func matches(_ payload: UnsafeRawBufferPointer, seq: Int, size: Int) -> Bool {
    guard payload.count == size else { return false }
    for i in 0..<size where payload[i] != patternByte(seq, i) { return false }
    return true
}

/// A second owner of `ring`'s memfd (as a child would get it), for attach tests.
private func duplicateDescriptor(_ ring: ShmRing) -> FileDescriptor {
    FileDescriptor(adopting: sy_fd_dup_min(ring.fileDescriptor, 0))
}

@Suite struct RingUnitTests {
    @Test func wrapAroundWithEveryRecordSize() throws {
        let ring = try ShmRing(capacity: 4096)
        let tx = try RingProducer(ring: ring)
        let rx = try RingConsumer(ring: ring)
        #expect(ring.maxPayload == 4088)
        var seq = 0
        var received = 0
        // Every size from 1 byte to the largest record (well over half the capacity); each size sends enough
        // records to wrap the ring at least twice, so records of every size meet the end of the data area
        // at many different offsets.
        for size in 1...ring.maxPayload {
            let records = max(3, (2 * 4096) / (size + 8) + 1)
            for _ in 0..<records {
                var reserved = try tx.tryReserve(type: UInt16(size & 0x7FFF), length: size)
                if reserved == nil {
                    // No room before the end: tryReserve left a padding record pending. Once the consumer
                    // has skipped it, the record must fit at offset 0.
                    tx.commit()
                    #expect(try rx.drain { _, _ in } == 0, "padding is not delivered")
                    reserved = try tx.tryReserve(type: UInt16(size & 0x7FFF), length: size)
                }
                guard let buffer = reserved else {
                    Issue.record("no room for a \(size)-byte record in an empty ring")
                    return
                }
                fill(buffer, seq: seq)
                tx.commit()
                var ok = false
                let n = try rx.drain { type, payload in
                    ok = type == UInt16(size & 0x7FFF) && matches(payload, seq: seq, size: size)
                }
                #expect(n == 1 && ok, "size \(size) record \(seq)")
                if n != 1 || !ok { return }
                seq += 1
                received += 1
            }
        }
        #expect(received == seq)
        #expect(try rx.drain { _, _ in } == 0)
    }

    @Test func batchedReserveCommitAndDrainAll() throws {
        let ring = try ShmRing(capacity: 8192)
        let tx = try RingProducer(ring: ring)
        let rx = try RingConsumer(ring: ring)
        var sent = 0
        var got = 0
        var sizes: [Int] = []
        for round in 0..<200 {
            // Reserve a batch of varied sizes, commit once, drain everything in one call.
            let batch = 1 + round % 9
            for k in 0..<batch {
                let size = (round * 37 + k * 101) % 700
                let buffer = try #require(try tx.tryReserve(type: 7, length: size))
                fill(buffer, seq: sent)
                sizes.append(size)
                sent += 1
            }
            #expect(try rx.drain { _, _ in } == 0, "nothing is visible before commit")
            tx.commit()
            var bad = 0
            let n = try rx.drain { type, payload in
                if type != 7 || !matches(payload, seq: got, size: sizes[got]) { bad += 1 }
                got += 1
            }
            #expect(n == batch && bad == 0)
        }
        #expect(got == sent)
    }

    @Test func fullAndEmptyRing() throws {
        let ring = try ShmRing(capacity: 4096)
        let tx = try RingProducer(ring: ring, policy: .futex(spinMicroseconds: 5))
        let rx = try RingConsumer(ring: ring, policy: .futex(spinMicroseconds: 5))
        // Empty: nothing to drain, a timed wait times out.
        #expect(try rx.drain { _, _ in } == 0)
        #expect(throws: RingError.timedOut) { try rx.waitForData(timeoutNanoseconds: 2_000_000) }
        // Fill with 56-byte payloads (64-byte records): exactly 64 fit.
        var count = 0
        while let buffer = try tx.tryReserve(type: 1, length: 56) {
            fill(buffer, seq: count)
            count += 1
        }
        #expect(count == 4096 / 64)
        #expect(try tx.tryReserve(type: 1, length: 0) == nil)
        tx.commit()
        // Full: a timed reserve times out.
        #expect(throws: RingError.timedOut) { _ = try tx.reserve(type: 1, length: 1, timeoutNanoseconds: 2_000_000) }
        // Drain a limited number, then the rest.
        var seen = 0
        #expect(try rx.drain(limit: 10) { _, payload in
            if matches(payload, seq: seen, size: 56) { seen += 1 }
        } == 10)
        #expect(try rx.drain { _, payload in
            if matches(payload, seq: seen, size: 56) { seen += 1 }
        } == count - 10)
        #expect(seen == count)
        // Empty again: the largest record fits.
        let big = try #require(try tx.tryReserve(type: 2, length: ring.maxPayload))
        #expect(big.count == 4088)
        tx.commit()
        var bigOK = false
        #expect(try rx.drain { type, payload in bigOK = type == 2 && payload.count == 4088 } == 1)
        #expect(bigOK)
    }

    @Test func invalidArguments() throws {
        #expect(throws: RingError.self) { _ = try ShmRing(capacity: 1000) }
        #expect(throws: RingError.self) { _ = try ShmRing(capacity: 2048) }
        let ring = try ShmRing(capacity: 4096)
        let tx = try RingProducer(ring: ring)
        #expect(throws: RingError.recordTooLarge(length: 4089, max: 4088)) { _ = try tx.tryReserve(type: 1, length: 4089) }
        #expect(throws: RingError.self) { _ = try tx.tryReserve(type: 1, length: -1) }
        #expect(throws: RingError.self) { _ = try tx.tryReserve(type: 0xFFFF, length: 8) }
        let eventRing = try ShmRing(capacity: 4096, consumerUsesEventFD: true)
        #expect(throws: RingError.self) { _ = try RingProducer(ring: eventRing) }
        #expect(throws: RingError.self) { _ = try RingConsumer(ring: eventRing) }
    }

    @Test func attachValidatesTheHeader() throws {
        let ring = try ShmRing(capacity: 8192)
        // A good ring attaches and shares data.
        let attached = try ShmRing(attaching: duplicateDescriptor(ring))
        #expect(attached.capacity == 8192)
        let tx = try RingProducer(ring: ring)
        try [UInt8](repeating: 9, count: 100).withUnsafeBytes { try tx.send(type: 3, payload: $0) }
        let rx = try RingConsumer(ring: attached)
        var sharedOK = false
        #expect(try rx.drain { type, payload in sharedOK = type == 3 && payload.count == 100 && payload[99] == 9 } == 1)
        #expect(sharedOK)

        let bytes = ring.unsafeMapping
        func expectCorrupt(_ offset: Int, _ value: UInt64, _ what: String) throws {
            let saved = bytes.load(fromByteOffset: offset, as: UInt64.self)
            bytes.storeBytes(of: value, toByteOffset: offset, as: UInt64.self)
            defer { bytes.storeBytes(of: saved, toByteOffset: offset, as: UInt64.self) }
            do {
                _ = try ShmRing(attaching: duplicateDescriptor(ring))
                Issue.record("attach accepted a corrupt \(what)")
            } catch {
                guard case .corruptHeader = error else {
                    Issue.record("\(what): expected corruptHeader, got \(error)")
                    return
                }
            }
        }
        try expectCorrupt(Int(SY_RING_OFF_MAGIC), 0x1234, "magic")
        try expectCorrupt(Int(SY_RING_OFF_VERSION), 99 | UInt64(0) << 32, "version")
        try expectCorrupt(Int(SY_RING_OFF_CAPACITY), 12345, "capacity (not a power of two)")
        try expectCorrupt(Int(SY_RING_OFF_CAPACITY), 1 << 20, "capacity (larger than the memfd)")
        try expectCorrupt(Int(SY_RING_OFF_DATA_OFFSET), 128, "data offset")
        try expectCorrupt(Int(SY_RING_OFF_MAPPING_SIZE), 1 << 30, "mapping size")
        try expectCorrupt(Int(SY_RING_OFF_HEAD), 8192 * 2 + 8 + 104, "head beyond tail + capacity")
        try expectCorrupt(Int(SY_RING_OFF_HEAD), 3 + 104, "unaligned head")
        // Still fine after restoring everything.
        _ = try ShmRing(attaching: duplicateDescriptor(ring))

        // An unsealed memfd or a tiny one is refused.
        let unsealed = try MemFD(name: "unsealed", size: 4096 + Int(SY_RING_HEADER_SIZE), sealSize: false)
        #expect(throws: RingError.self) { _ = try ShmRing(attaching: unsealed.fd.duplicate()) }
        let tiny = try MemFD(name: "tiny", size: 64)
        #expect(throws: RingError.self) { _ = try ShmRing(attaching: tiny.fd.duplicate()) }
    }

    @Test func corruptPositionsAreDetectedAtRunTime() throws {
        let ring = try ShmRing(capacity: 4096)
        let tx = try RingProducer(ring: ring)
        let rx = try RingConsumer(ring: ring)
        let head = (ring.unsafeMapping.baseAddress! + Int(SY_RING_OFF_HEAD)).assumingMemoryBound(to: UInt64.self)
        let tail = (ring.unsafeMapping.baseAddress! + Int(SY_RING_OFF_TAIL)).assumingMemoryBound(to: UInt64.self)
        // The producer claims more than a capacity's worth of data.
        head.pointee = 4096 + 8
        #expect(throws: RingError.self) { try rx.drain { _, _ in } }
        // The consumer is poisoned from now on, even if the header is repaired.
        head.pointee = 0
        #expect(throws: RingError.self) { try rx.drain { _, _ in } }

        // The consumer claims to have consumed more than was published.
        tail.pointee = 1 << 40
        _ = try #require(try tx.tryReserve(type: 1, length: 8))
        tx.commit()
        #expect(throws: RingError.self) {
            for _ in 0..<1000 { _ = try tx.tryReserve(type: 1, length: 100); tx.commit() }
        }
        // A producer attached after the damage refuses to start.
        #expect(throws: RingError.self) { _ = try RingProducer(ring: ring) }
        #expect(throws: RingError.self) { _ = try ShmRing(attaching: duplicateDescriptor(ring)) }
    }

    @Test func corruptRecordsAreDetected() throws {
        // Each case: write one 40-byte record at offset 0, damage its header, expect corruptRecord.
        let cases: [(String, (UnsafeMutableRawPointer) -> Void)] = [
            ("length beyond the published head", { $0.storeBytes(of: UInt32(1000), as: UInt32.self) }),
            ("bad check", { $0.storeBytes(of: UInt16(0), toByteOffset: 6, as: UInt16.self) }),
            ("length beyond the data area", { p in
                let length: UInt32 = 1 << 20, type: UInt16 = 1
                p.storeBytes(of: length, as: UInt32.self)
                p.storeBytes(of: sy_ring_record_check(length, type), toByteOffset: 6, as: UInt16.self)
            }),
            ("padding not reaching the end", { p in
                let length: UInt32 = 32, type = UInt16(SY_RING_TYPE_PADDING)
                p.storeBytes(of: length, as: UInt32.self)
                p.storeBytes(of: type, toByteOffset: 4, as: UInt16.self)
                p.storeBytes(of: sy_ring_record_check(length, type), toByteOffset: 6, as: UInt16.self)
            }),
            ("garbage", { p in p.storeBytes(of: UInt64(0xFFFF_FFFF_FFFF_FFFF), as: UInt64.self) }),
        ]
        for (what, damage) in cases {
            let ring = try ShmRing(capacity: 4096)
            let tx = try RingProducer(ring: ring)
            let rx = try RingConsumer(ring: ring)
            _ = try #require(try tx.tryReserve(type: 1, length: 40))
            tx.commit()
            damage(ring.unsafeMapping.baseAddress! + Int(SY_RING_HEADER_SIZE))
            var delivered = 0
            do {
                try rx.drain { _, _ in delivered += 1 }
                Issue.record("\(what): not detected")
            } catch let error {
                guard case .corruptRecord(let position, _) = error else {
                    Issue.record("\(what): expected corruptRecord, got \(error)")
                    continue
                }
                #expect(position == 0)
            }
            #expect(delivered == 0, "\(what): nothing is delivered")
            #expect(throws: RingError.self, "\(what): the ring stays poisoned") { try rx.waitForData(timeoutNanoseconds: 1000) }
        }
    }

    @Test func eventfdWakeMode() throws {
        let notifier = try RingNotifier()
        let ring = try ShmRing(capacity: 4096, consumerUsesEventFD: true)
        let tx = try RingProducer(ring: ring, notifier: notifier)
        let rx = try RingConsumer(ring: ring, notifier: notifier)
        // Not sleeping: a commit does not touch the eventfd.
        _ = try #require(try tx.tryReserve(type: 1, length: 8))
        tx.commit()
        #expect(try notifier.eventFD.consume() == nil)
        // Data is there: do not sleep.
        #expect(try rx.prepareToSleep() == nil)
        #expect(try rx.drain { _, _ in } == 1)
        // Empty: announce sleep, then a commit writes the eventfd.
        let seq = try #require(try rx.prepareToSleep())
        #expect(rx.wakeWord.pointee == seq)
        _ = try #require(try tx.tryReserve(type: 1, length: 8))
        tx.commit()
        #expect(try notifier.eventFD.wait(timeoutMs: 1000))
        #expect(try notifier.eventFD.consume() == 1)
        #expect(rx.wakeWord.pointee != seq, "the futex word is bumped too")
        rx.finishSleep()
        #expect(try rx.drain { _, _ in } == 1)
        // A blocking wait in eventfd mode is woken by another thread's commit.
        let thread = try JoinableThread {
            usleep(20_000)
            _ = try? tx.tryReserve(type: 5, length: 16)
            tx.commit()
        }
        let start = sy_monotonic_ns()
        try rx.waitForData(timeoutNanoseconds: 5_000_000_000)
        #expect(sy_monotonic_ns() - start < 2_000_000_000)
        thread.join()
        var lastType: UInt16 = 0
        #expect(try rx.drain { type, _ in lastType = type } == 1)
        #expect(lastType == 5)
    }

    @Test func closeEndsTheConsumersWait() throws {
        let ring = try ShmRing(capacity: 4096)
        let tx = try RingProducer(ring: ring)
        let rx = try RingConsumer(ring: ring)
        _ = try #require(try tx.tryReserve(type: 1, length: 8))
        tx.close()
        try rx.waitForData(timeoutNanoseconds: 1_000_000)
        #expect(try rx.drain { _, _ in } == 1)
        #expect(throws: RingError.closed) { try rx.waitForData(timeoutNanoseconds: 1_000_000_000) }
        rx.close()
        #expect(tx.consumerClosed)
    }
}

/// The idle-wait counters behind `serve --front-placement follow`: a wait counts once it finds no record at
/// once, and counts as shared when one of its yields gave the CPU to another thread for a moment.
@Suite struct IdleWaitCounterTests {
    /// 2-200 µs: another task ran briefly. Faster: nothing else was runnable; slower: a CPU hog's time slice.
    @Test func whatCountsAsShared() {
        #expect(!RingConsumer.isSharedYield(nanoseconds: 300))
        #expect(!RingConsumer.isSharedYield(nanoseconds: 1_999))
        #expect(RingConsumer.isSharedYield(nanoseconds: 2_000))
        #expect(RingConsumer.isSharedYield(nanoseconds: 6_000))
        #expect(RingConsumer.isSharedYield(nanoseconds: 200_000))
        #expect(!RingConsumer.isSharedYield(nanoseconds: 200_001))
        #expect(!RingConsumer.isSharedYield(nanoseconds: 3_000_000))
    }

    @Test func aPeerOnTheSameCPUMakesWaitsShared() throws {
        guard let cpu = try CPUAffinity.get().first else { return }
        let ring = try ShmRing(capacity: 4096)
        let tx = try RingProducer(ring: ring)
        let rx = try RingConsumer(ring: ring, policy: WaitPolicy(spinNanoseconds: 500_000_000, sleeps: true,
                                                                 yieldAfterNanoseconds: 0))
        // A record already there: no wait.
        let b = try #require(try tx.tryReserve(type: 1, length: 8))
        b.storeBytes(of: 7, as: UInt64.self)
        tx.commit()
        try rx.waitForData()
        #expect(rx.waits == 0 && rx.sharedWaits == 0)
        #expect(try rx.drain { _, _ in } == 1)

        // A thread on the consumer's CPU that runs ~5 µs at a time and yields: the waiting consumer's yields
        // hand it the CPU for about that long. Each wait lasts 20 ms (thousands of yields), so other tests'
        // threads on that CPU (a hog takes whole slices) still leave most waits a short hand-over.
        final class Shared: @unchecked Sendable {
            // stop: written by the test thread, read by the peer; the rest written by the consumer before `done`.
            let stop = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
            var waits: UInt64 = 0, shared: UInt64 = 0, timeouts = 0
            init() { stop.initialize(to: 0) }
            deinit { stop.deallocate() }
        }
        let result = Shared()
        let peer = Thread {
            try? CPUAffinity.set([cpu])
            while sy_load_acquire_u64(result.stop) == 0 {
                let until = sy_monotonic_ns() + 5_000
                while sy_monotonic_ns() < until { sy_cpu_relax() }
                sched_yield()
            }
        }
        let done = DispatchSemaphore(value: 0)
        let consumer = Thread {
            try? CPUAffinity.set([cpu])
            for _ in 0..<5 {
                do throws(RingError) {
                    try rx.waitForData(timeoutNanoseconds: 20_000_000)
                } catch {
                    if error == .timedOut { result.timeouts += 1 }
                }
            }
            result.waits = rx.waits
            result.shared = rx.sharedWaits
            done.signal()
        }
        peer.start()
        Thread.sleep(forTimeInterval: 0.01)
        consumer.start()
        done.wait()
        sy_store_release_u64(result.stop, 1)
        #expect(result.timeouts == 5)
        #expect(result.waits == 5)
        #expect(result.shared >= 3, "waits that gave the CPU to the peer: \(result.shared) of 5")
    }
}
