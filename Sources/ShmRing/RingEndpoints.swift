import CSwitchyardSys
import Glibc
import SysKit

// MARK: - Waking without losing a wake-up
//
// The sleeper (say the consumer, waiting for data) does:       The waker (the producer, after writing) does:
//   1. seq = load(consumer_wake)                                 a. store-release(head, new)
//   2. store(consumer_sleeping, 1)                               b. FULL FENCE
//   3. FULL FENCE                                                c. if load(consumer_sleeping) == 1:
//   4. if load-acquire(head) moved: clear flag, return                 consumer_wake += 1; FUTEX_WAKE
//   5. FUTEX_WAIT(consumer_wake, seq)  (or poll its eventfd)           (or write the eventfd)
//
// The race this closes: without the fences, the sleeper's load of `head` (4) could be satisfied before
// its flag store (2) becomes visible, while the waker's load of the flag (c) is satisfied before its head
// store (a) becomes visible (x86 lets a load pass an earlier store). Then the sleeper sees no data, the
// waker sees nobody sleeping, and the sleeper sleeps on data that is already there: a lost wake-up.
// With a full fence on both sides (Dekker's pattern) at least one of them sees the other's store: either
// the sleeper sees the new head and does not sleep, or the waker sees the flag and wakes it. And because
// the sleeper read `seq` (1) before publishing its flag, a wake-up that lands between 4 and 5 has already
// bumped consumer_wake, so FUTEX_WAIT returns at once (EAGAIN) instead of sleeping; an eventfd keeps its
// count until read, so a write that lands before the poll is armed is not lost either. The producer
// waiting for space is the mirror image (tail / producer_sleeping / producer_wake).

/// The producing side of a ring. One per ring, used by one thread at a time.
///
/// Records are written in place: `reserve` returns the payload buffer inside the shared mapping; fill it,
/// then `commit()` publishes every record reserved since the last commit at once (batching). A blocking
/// `reserve` that has to wait for space first commits the records reserved so far (otherwise the consumer
/// could never free space), so every reserved buffer must be filled before the next `reserve` call.
public final class RingProducer: @unchecked Sendable {
    // @unchecked Sendable: may be handed to another thread, but is used by one thread at a time (SPSC).
    public let ring: ShmRing
    public let policy: WaitPolicy
    public let peer: PeerMonitor?
    let notifier: RingNotifier?

    let data: UnsafeMutableRawPointer
    let cap: UInt64
    let mask: UInt64
    let headWord: UnsafeMutablePointer<UInt64>
    let tailWord: UnsafeMutablePointer<UInt64>
    let consumerWake: UnsafeMutablePointer<UInt32>
    let consumerSleeping: UnsafeMutablePointer<UInt32>
    let producerWake: UnsafeMutablePointer<UInt32>
    let producerSleeping: UnsafeMutablePointer<UInt32>
    let closedWord: UnsafeMutablePointer<UInt32>

    /// This side's private positions. They live behind a pointer rather than in stored properties
    /// because Swift checks exclusive access to a class's stored `var`s dynamically, which would cost more
    /// than the rest of the hot path.
    struct State {
        /// End of the last reserved record (bytes), >= published.
        var writePos: UInt64
        /// What `head` holds (only this side writes it).
        var published: UInt64
        /// Last `tail` we read; the consumer's real tail is >= this.
        var cachedTail: UInt64
    }
    let state: UnsafeMutablePointer<State>
    var writePos: UInt64 {
        @inline(__always) get { state.pointee.writePos }
        @inline(__always) set { state.pointee.writePos = newValue }
    }
    var published: UInt64 {
        @inline(__always) get { state.pointee.published }
        @inline(__always) set { state.pointee.published = newValue }
    }
    var cachedTail: UInt64 {
        @inline(__always) get { state.pointee.cachedTail }
        @inline(__always) set { state.pointee.cachedTail = newValue }
    }
    let maxPayloadValue: Int

    /// - Parameters:
    ///   - notifier: required when the ring was created with `consumerUsesEventFD` (the consumer's eventfd,
    ///     e.g. inherited from the front); the producer writes it instead of FUTEX_WAKE.
    public init(ring: ShmRing, policy: WaitPolicy = .default, peer: PeerMonitor? = nil,
                notifier: RingNotifier? = nil) throws(RingError) {
        if ring.consumerUsesEventFD && notifier == nil {
            throw .invalidArgument("ring wakes its consumer through an eventfd, but no notifier was given")
        }
        self.ring = ring
        self.policy = policy
        self.peer = peer
        self.notifier = ring.consumerUsesEventFD ? notifier : nil
        data = ring.data
        cap = UInt64(ring.capacity)
        mask = cap - 1
        headWord = ring.word64(SY_RING_OFF_HEAD)
        tailWord = ring.word64(SY_RING_OFF_TAIL)
        consumerWake = ring.word32(SY_RING_OFF_CONSUMER_WAKE)
        consumerSleeping = ring.word32(SY_RING_OFF_CONSUMER_SLEEPING)
        producerWake = ring.word32(SY_RING_OFF_PRODUCER_WAKE)
        producerSleeping = ring.word32(SY_RING_OFF_PRODUCER_SLEEPING)
        closedWord = ring.word32(SY_RING_OFF_CLOSED)
        maxPayloadValue = ring.maxPayload
        // Resume from the shared positions, re-validated (the peer may have written them since attach).
        let head = sy_load_acquire_u64(headWord)
        let tail = sy_load_acquire_u64(tailWord)
        guard tail <= head, head - tail <= cap, head & 7 == 0, tail & 7 == 0 else {
            throw .corruptHeader("positions head \(head) tail \(tail) are inconsistent")
        }
        // Allocated last, so that a throw above leaves nothing to free.
        state = UnsafeMutablePointer<State>.allocate(capacity: 1)
        state.initialize(to: State(writePos: head, published: head, cachedTail: tail))
    }

    deinit { state.deallocate() }

    /// Largest payload one record can carry.
    public var maxPayload: Int { ring.maxPayload }
    /// Largest payload that fits at any write position (see ShmRing.maxPayloadAnyOffset).
    public var maxPayloadAnyOffset: Int { ring.maxPayloadAnyOffset }

    /// Bytes reserved but not yet committed.
    public var pendingBytes: Int { Int(writePos - published) }

    /// Reserves a record of `length` payload bytes without waiting: nil if the ring has no room now.
    /// May write (uncommitted) a padding record to reach the start of the data area.
    @inline(__always)
    public func tryReserve(type: UInt16, length: Int) throws(RingError) -> UnsafeMutableRawBufferPointer? {
        guard type != UInt16(SY_RING_TYPE_PADDING) else { throw .invalidArgument("record type 0xFFFF is reserved") }
        guard length >= 0, length <= maxPayloadValue else { throw .recordTooLarge(length: length, max: maxPayloadValue) }
        let need = align8(UInt64(length) + UInt64(SY_RING_RECORD_HEADER_SIZE))
        var offset = writePos & mask
        let toEnd = cap - offset
        if need > toEnd {
            // The record would straddle the end: fill the rest with a padding record (toEnd >= 8, since
            // offsets are multiples of 8), so the record starts at offset 0.
            guard try hasSpace(toEnd) else { return nil }
            writeHeader(at: offset, length: UInt32(toEnd - 8), type: UInt16(SY_RING_TYPE_PADDING))
            writePos += toEnd
            offset = 0
        }
        guard try hasSpace(need) else { return nil }
        writeHeader(at: offset, length: UInt32(length), type: type)
        writePos += need
        return UnsafeMutableRawBufferPointer(start: data + Int(offset) + 8, count: length)
    }

    /// Reserves a record, waiting (per the policy) for the consumer to make room; commits the records
    /// reserved so far before waiting. Throws `peerDied`, `closed` (the consumer closed) or `timedOut`.
    public func reserve(type: UInt16, length: Int, timeoutNanoseconds: UInt64? = nil) throws(RingError) -> UnsafeMutableRawBufferPointer {
        if let buffer = try tryReserve(type: type, length: length) { return buffer }
        var clock = WaitClock(timeoutNanoseconds: timeoutNanoseconds, policy: policy)
        while true {
            commit()
            // Worst case the record needs padding to the end plus itself; wait for just the next step.
            let need = align8(UInt64(length) + 8)
            let toEnd = cap - (writePos & mask)
            try waitForSpace(need > toEnd ? toEnd : need, clock: &clock)
            if let buffer = try tryReserve(type: type, length: length) { return buffer }
        }
    }

    /// Copies `payload` into one record and commits it.
    public func send(type: UInt16, payload: UnsafeRawBufferPointer, timeoutNanoseconds: UInt64? = nil) throws(RingError) {
        let buffer = try reserve(type: type, length: payload.count, timeoutNanoseconds: timeoutNanoseconds)
        if let src = payload.baseAddress, let dst = buffer.baseAddress { dst.copyMemory(from: src, byteCount: payload.count) }
        commit()
    }

    /// Publishes every record reserved since the last commit, and wakes the consumer if it sleeps.
    @inline(__always)
    public func commit() {
        guard writePos != published else { return }
        // RELEASE: pairs with the consumer's ACQUIRE load of `head` (RingConsumer.refreshHead). Every record
        // byte written before this store is visible to the consumer once it sees the new head.
        sy_store_release_u64(headWord, writePos)
        published = writePos
        // FULL FENCE between publishing and reading the consumer's sleeping flag (see "lost wake-up" above).
        sy_fence_seq_cst()
        if sy_load_relaxed_u32(consumerSleeping) != 0 { wakeConsumer() }
        prefetchAhead()
    }

    /// Bytes past the write position that `commit` prefetches for writing.
    static let prefetchBytes: UInt64 = 256

    /// Asks for the lines the next records will be written to in exclusive state now, while nothing waits
    /// on this side: the consumer's core read them last (a ring reuses its bytes), so otherwise the next
    /// reserve + copy + commit would pay a read-for-ownership miss per line on the request's path
    /// (`switchyard-bench ring --phases rtt`, alternating: spin RTT p50 0.71-0.89 µs with it, 0.83-0.93
    /// without, 64 and 200-byte records). Only bytes the consumer has released (by the last tail we read) are touched; a
    /// prefetch is a hint and changes nothing the consumer can see.
    @inline(__always)
    func prefetchAhead() {
        let n = min(Self.prefetchBytes, cap - (writePos - cachedTail))
        var off: UInt64 = 0
        while off < n {
            sy_prefetch_write(data + Int((writePos &+ off) & mask))
            off += 64
        }
    }

    /// Marks the producer side closed (after committing): the consumer gets `closed` once it has read
    /// everything.
    public func close() {
        commit()
        // Only this side ever sets this bit, so adding it when it is clear is an atomic OR. The seq_cst
        // read-modify-write comes after the release store of head: a consumer that sees the bit (acquire)
        // also sees the final head.
        if sy_load_relaxed_u32(closedWord) & SY_RING_CLOSED_PRODUCER == 0 {
            _ = sy_fetch_add_u32(closedWord, SY_RING_CLOSED_PRODUCER)
        }
        wakeConsumer()
    }

    /// Whether the consumer closed its side.
    public var consumerClosed: Bool { sy_load_acquire_u32(closedWord) & SY_RING_CLOSED_CONSUMER != 0 }

    func wakeConsumer() {
        _ = sy_fetch_add_u32(consumerWake, 1)
        if let notifier {
            try? notifier.eventFD.signal()
        } else {
            _ = sy_futex_wake(consumerWake, 1)
        }
    }

    @inline(__always)
    func writeHeader(at offset: UInt64, length: UInt32, type: UInt16) {
        let check = sy_ring_record_check(length, type)
        let word = UInt64(length) | UInt64(type) << 32 | UInt64(check) << 48
        (data + Int(offset)).storeBytes(of: word, as: UInt64.self)
    }

    /// True if `n` more bytes fit after writePos (re-reading the consumer's tail only when the cached
    /// copy says no).
    @inline(__always)
    func hasSpace(_ n: UInt64) throws(RingError) -> Bool {
        if writePos - cachedTail + n <= cap { return true }
        try refreshTail()
        return writePos - cachedTail + n <= cap
    }

    func refreshTail() throws(RingError) {
        // ACQUIRE: pairs with the consumer's RELEASE store of `tail` (RingConsumer.releaseConsumed): the
        // consumer's reads of every byte below the new tail happened before we overwrite those bytes.
        let t = sy_load_acquire_u64(tailWord)
        guard t >= cachedTail, t <= published, t & 7 == 0 else {
            throw .corruptHeader("consumer position \(t) is outside [\(cachedTail), \(published)] or unaligned")
        }
        cachedTail = t
    }

    func waitForSpace(_ n: UInt64, clock: inout WaitClock) throws(RingError) {
        let spinStart = sy_monotonic_ns()
        let spinUntil = policy.spinNanoseconds == .max ? UInt64.max : spinStart &+ policy.spinNanoseconds
        let yieldFrom = spinStart &+ policy.yieldAfterNanoseconds
        var spins = 0
        while policy.spinNanoseconds > 0 || !policy.sleeps {
            if try hasSpace(n) { return }
            if consumerClosed { throw .closed }
            sy_cpu_relax()
            spins &+= 1
            if spins & 63 == 0 {
                let now = sy_monotonic_ns()
                try clock.check(now: now, peer: peer)
                if policy.sleeps && now >= spinUntil { break }
                // A long fruitless spin probably means the other side is not running (more runnable
                // threads than CPUs): give our CPU away so that it can.
                if now >= yieldFrom { sched_yield() }
            }
        }
        while true {
            // Sleeper steps 1-5 of the protocol above, on the producer's words.
            let seq = sy_load_acquire_u32(producerWake)
            sy_store_relaxed_u32(producerSleeping, 1)
            sy_fence_seq_cst()
            if try hasSpace(n) {
                sy_store_relaxed_u32(producerSleeping, 0)
                return
            }
            if consumerClosed {
                sy_store_relaxed_u32(producerSleeping, 0)
                throw .closed
            }
            let now = sy_monotonic_ns()
            do {
                try clock.check(now: now, peer: peer)
            } catch {
                sy_store_relaxed_u32(producerSleeping, 0)
                throw error
            }
            // Any return (woken, EAGAIN: already bumped, ETIMEDOUT: time to check the peer, EINTR) just
            // leads back to the checks at the top of the loop, so EINTR needs no retry here.
            _ = sy_futex_wait(producerWake, seq, clock.sleepSlice(now: now))
            sy_store_relaxed_u32(producerSleeping, 0)
        }
    }
}

/// The consuming side of a ring. One per ring, used by one thread at a time.
///
/// `drain` hands every available record to a closure as `(type, payload)` where `payload` points into the
/// shared mapping (zero copy; valid only during the call), then releases the space in one store.
/// Every record is validated against the ring's capacity and the published head before it is touched.
public final class RingConsumer: @unchecked Sendable {
    // @unchecked Sendable: may be handed to another thread, but is used by one thread at a time (SPSC).
    public let ring: ShmRing
    public let policy: WaitPolicy
    public let peer: PeerMonitor?
    let notifier: RingNotifier?

    let data: UnsafeMutableRawPointer
    let cap: UInt64
    let mask: UInt64
    let headWord: UnsafeMutablePointer<UInt64>
    let tailWord: UnsafeMutablePointer<UInt64>
    let consumerWake: UnsafeMutablePointer<UInt32>
    let consumerSleeping: UnsafeMutablePointer<UInt32>
    let producerWake: UnsafeMutablePointer<UInt32>
    let producerSleeping: UnsafeMutablePointer<UInt32>
    let closedWord: UnsafeMutablePointer<UInt32>

    /// This side's private positions, behind a pointer for the same reason as RingProducer.State.
    struct State {
        /// Start of the next record to read.
        var readPos: UInt64
        /// What `tail` holds (only this side writes it).
        var released: UInt64
        /// Last `head` we read; the producer's real head is >= this.
        var cachedHead: UInt64
        /// Set once corruption was found (the error is in `poisonError`): the ring is unusable from then on.
        var isPoisoned: Bool
    }
    let state = UnsafeMutablePointer<State>.allocate(capacity: 1)
    var readPos: UInt64 {
        @inline(__always) get { state.pointee.readPos }
        @inline(__always) set { state.pointee.readPos = newValue }
    }
    var released: UInt64 {
        @inline(__always) get { state.pointee.released }
        @inline(__always) set { state.pointee.released = newValue }
    }
    var cachedHead: UInt64 {
        @inline(__always) get { state.pointee.cachedHead }
        @inline(__always) set { state.pointee.cachedHead = newValue }
    }
    var poisonError: RingError = .corruptHeader("unknown")
    var poisoned: RingError? { state.pointee.isPoisoned ? poisonError : nil }

    /// - Parameter notifier: the eventfd the producer writes when the ring was created with
    ///   `consumerUsesEventFD` (an io_uring loop polls it; `waitForData` polls it too). Ignored otherwise.
    public init(ring: ShmRing, policy: WaitPolicy = .default, peer: PeerMonitor? = nil,
                notifier: RingNotifier? = nil) throws(RingError) {
        if ring.consumerUsesEventFD && notifier == nil {
            throw .invalidArgument("ring wakes its consumer through an eventfd, but no notifier was given")
        }
        self.ring = ring
        self.policy = policy
        self.peer = peer
        self.notifier = ring.consumerUsesEventFD ? notifier : nil
        data = ring.data
        cap = UInt64(ring.capacity)
        mask = cap - 1
        headWord = ring.word64(SY_RING_OFF_HEAD)
        tailWord = ring.word64(SY_RING_OFF_TAIL)
        consumerWake = ring.word32(SY_RING_OFF_CONSUMER_WAKE)
        consumerSleeping = ring.word32(SY_RING_OFF_CONSUMER_SLEEPING)
        producerWake = ring.word32(SY_RING_OFF_PRODUCER_WAKE)
        producerSleeping = ring.word32(SY_RING_OFF_PRODUCER_SLEEPING)
        closedWord = ring.word32(SY_RING_OFF_CLOSED)
        let tail = sy_load_acquire_u64(tailWord)
        state.initialize(to: State(readPos: tail, released: tail, cachedHead: tail, isPoisoned: false))
    }

    deinit { state.deallocate() }

    /// Whether at least one record (or padding) is published and unread. Throws on a corrupt head.
    @inline(__always)
    public func hasData() throws(RingError) -> Bool {
        if readPos != cachedHead { return true }
        try refreshHead()
        return readPos != cachedHead
    }

    /// Hands up to `limit` available records to `body` (in order), then frees their space. Returns how
    /// many records were handed over (0: none available). Never waits.
    @discardableResult
    public func drain(limit: Int = .max, _ body: (_ type: UInt16, _ payload: UnsafeRawBufferPointer) -> Void) throws(RingError) -> Int {
        if state.pointee.isPoisoned { throw poisonError }
        guard try hasData() else { return 0 }
        var count = 0
        defer { releaseConsumed() }
        while count < limit && readPos != cachedHead {
            let offset = readPos & mask
            let available = cachedHead - readPos  // > 0, multiple of 8 (checked in refreshHead)
            let toEnd = cap - offset              // >= 8
            // One atomic (untorn) load of the 8-byte header; everything below uses this local copy, so a
            // peer scribbling on the header now cannot change what we validated.
            let word = sy_load_relaxed_u64((data + Int(offset)).assumingMemoryBound(to: UInt64.self))
            let length = UInt32(truncatingIfNeeded: word)
            let type = UInt16(truncatingIfNeeded: word >> 32)
            let check = UInt16(truncatingIfNeeded: word >> 48)
            let size = align8(UInt64(length) + 8)
            if check != sy_ring_record_check(length, type) {
                throw poison(.corruptRecord(position: readPos, reason: "header check 0x\(String(check, radix: 16)) does not match length \(length) type \(type)"))
            }
            if size > toEnd {
                throw poison(.corruptRecord(position: readPos, reason: "length \(length) runs past the end of the data area"))
            }
            if size > available {
                throw poison(.corruptRecord(position: readPos, reason: "length \(length) runs past the published head"))
            }
            if type == UInt16(SY_RING_TYPE_PADDING) {
                if size != toEnd {
                    throw poison(.corruptRecord(position: readPos, reason: "padding record of \(length) bytes does not end at the end of the data area"))
                }
                readPos += size
                continue
            }
            body(type, UnsafeRawBufferPointer(start: data + Int(offset) + 8, count: Int(length)))
            readPos += size
            count += 1
        }
        return count
    }

    /// Calls of `waitForData` that found no record at once (this side's thread only).
    public private(set) var waits: UInt64 = 0
    /// Of those, the ones whose spin gave the CPU to another task for a moment: a sched_yield that took
    /// `sharedYieldRange`. Another thread that runs briefly on our CPU while we wait (a client woken by
    /// the front, typically) makes this grow with `waits`; an idle CPU returns from sched_yield in well
    /// under 2 µs, and a CPU hog takes a whole time slice (milliseconds).
    public private(set) var sharedWaits: UInt64 = 0
    public static let sharedYieldRange: ClosedRange<UInt64> = 2_000...200_000
    /// Whether a sched_yield that took `nanoseconds` handed the CPU to a briefly running task.
    @inline(__always) public static func isSharedYield(nanoseconds: UInt64) -> Bool {
        sharedYieldRange.contains(nanoseconds)
    }

    /// Waits (per the policy) until a record is available. Throws `closed` once the producer closed and
    /// everything was read, `peerDied` (checked every policy.peerCheckNanoseconds) or `timedOut`.
    public func waitForData(timeoutNanoseconds: UInt64? = nil) throws(RingError) {
        if let poisoned { throw poisoned }
        if try hasData() { return }
        waits &+= 1
        var clock = WaitClock(timeoutNanoseconds: timeoutNanoseconds, policy: policy)
        let spinStart = sy_monotonic_ns()
        let spinUntil = policy.spinNanoseconds == .max ? UInt64.max : spinStart &+ policy.spinNanoseconds
        let yieldFrom = spinStart &+ policy.yieldAfterNanoseconds
        var spins = 0
        var shared = false
        defer { if shared { sharedWaits &+= 1 } }
        while policy.spinNanoseconds > 0 || !policy.sleeps {
            if try hasData() { return }
            sy_cpu_relax()
            spins &+= 1
            if spins & 63 == 0 {
                try checkClosed()
                let now = sy_monotonic_ns()
                try clock.check(now: now, peer: peer)
                if policy.sleeps && now >= spinUntil { break }
                // A long fruitless spin probably means the other side is not running (more runnable
                // threads than CPUs): give our CPU away so that it can.
                if now >= yieldFrom {
                    if shared {
                        sched_yield()
                    } else {
                        let before = sy_monotonic_ns()
                        sched_yield()
                        shared = Self.isSharedYield(nanoseconds: sy_monotonic_ns() &- before)
                    }
                }
            }
        }
        while true {
            guard let seq = try prepareToSleep() else { return }
            do throws(RingError) {
                try checkClosed()
                let now = sy_monotonic_ns()
                try clock.check(now: now, peer: peer)
                let slice = clock.sleepSlice(now: now)
                if let notifier {
                    // Eventfd mode: the producer writes the eventfd instead of FUTEX_WAKE. Its count survives
                    // until read, so a wake-up that lands before this poll is not lost.
                    let ms = Int32(clamping: (slice + 999_999) / 1_000_000)
                    do throws(SysError) {
                        if try notifier.eventFD.wait(timeoutMs: ms) { _ = try notifier.eventFD.consume() }
                    } catch {
                        throw RingError.system(error)
                    }
                } else {
                    // Every outcome (woken, EAGAIN, ETIMEDOUT, EINTR) loops back to the checks.
                    _ = sy_futex_wait(consumerWake, seq, slice)
                }
            } catch {
                finishSleep()
                throw error
            }
            finishSleep()
        }
    }

    /// Waits for data, then drains it: the blocking receive loop's body.
    @discardableResult
    public func receive(limit: Int = .max, timeoutNanoseconds: UInt64? = nil,
                        _ body: (_ type: UInt16, _ payload: UnsafeRawBufferPointer) -> Void) throws(RingError) -> Int {
        try waitForData(timeoutNanoseconds: timeoutNanoseconds)
        return try drain(limit: limit, body)
    }

    // MARK: Sleeping from an event loop (eventfd or IORING_OP_FUTEX_WAIT)

    /// Announces that this consumer is about to sleep (steps 1-4 of the protocol above). Returns nil if
    /// data arrived meanwhile (do not sleep; drain instead), else the futex value to sleep on: wait with
    /// FUTEX_WAIT / IORING_OP_FUTEX_WAIT on `wakeWord` for that value, or poll the ring's eventfd (when the
    /// ring was created with `consumerUsesEventFD`). Call `finishSleep()` after waking, before draining.
    public func prepareToSleep() throws(RingError) -> UInt32? {
        let seq = sy_load_acquire_u32(consumerWake)
        sy_store_relaxed_u32(consumerSleeping, 1)
        // FULL FENCE between announcing the sleep and re-reading head (pairs with the one in commit()).
        sy_fence_seq_cst()
        do {
            if try hasData() {
                finishSleep()
                return nil
            }
        } catch {
            finishSleep()
            throw error
        }
        return seq
    }

    /// Clears the sleeping flag (after waking up or deciding not to sleep).
    public func finishSleep() {
        sy_store_relaxed_u32(consumerSleeping, 0)
    }

    /// The 32-bit futex word this consumer sleeps on (for IORING_OP_FUTEX_WAIT; shared, not private).
    public var wakeWord: UnsafeMutablePointer<UInt32> { consumerWake }

    /// Marks the consumer side closed: a producer waiting for space gets `closed`.
    public func close() {
        // Only this side ever sets this bit, so adding it when it is clear is an atomic OR.
        if sy_load_relaxed_u32(closedWord) & SY_RING_CLOSED_CONSUMER == 0 {
            _ = sy_fetch_add_u32(closedWord, SY_RING_CLOSED_CONSUMER)
        }
        _ = sy_fetch_add_u32(producerWake, 1)
        _ = sy_futex_wake(producerWake, 1)
    }

    /// Whether the producer closed its side (there may still be records to drain).
    public var producerClosed: Bool { sy_load_acquire_u32(closedWord) & SY_RING_CLOSED_PRODUCER != 0 }

    func checkClosed() throws(RingError) {
        // ACQUIRE on `closed` pairs with the producer's seq_cst update after its last commit: if we see the
        // bit, the final head is visible to refreshHead.
        if producerClosed, try !hasData() { throw .closed }
    }

    func poison(_ error: RingError) -> RingError {
        poisonError = error
        state.pointee.isPoisoned = true
        return error
    }

    func refreshHead() throws(RingError) {
        if state.pointee.isPoisoned { throw poisonError }
        // ACQUIRE: pairs with the producer's RELEASE store of `head` in commit(): every record byte below
        // the new head is visible to us before we read it.
        let h = sy_load_acquire_u64(headWord)
        guard h >= cachedHead, h - readPos <= cap, h & 7 == 0 else {
            throw poison(.corruptHeader("producer position \(h) is outside [\(cachedHead), \(readPos + cap)] or unaligned"))
        }
        cachedHead = h
    }

    /// Publishes the consumed position and wakes the producer if it waits for space.
    @inline(__always)
    func releaseConsumed() {
        guard readPos != released else { return }
        // RELEASE: pairs with the producer's ACQUIRE load of `tail` (RingProducer.refreshTail): our reads
        // of the consumed records complete before the producer may overwrite them.
        sy_store_release_u64(tailWord, readPos)
        released = readPos
        // FULL FENCE between publishing the tail and reading the producer's sleeping flag.
        sy_fence_seq_cst()
        if sy_load_relaxed_u32(producerSleeping) != 0 {
            _ = sy_fetch_add_u32(producerWake, 1)
            _ = sy_futex_wake(producerWake, 1)
        }
    }
}
