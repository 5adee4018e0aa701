import Glibc
import Testing
import Wire
@testable import Worker

/// Drives a scheduler over the echo engine and collects what it publishes.
final class Harness {
    let runner: EchoRunner
    let scheduler: Scheduler
    var records: [Record] = []
    var now: UInt64 = 1

    init(slots: Int = 8, maxBatchTokens: Int = 4096, contextLength: Int = 4096, config: SchedulerConfig = SchedulerConfig()) {
        runner = EchoRunner(slots: slots, contextLength: contextLength, maxBatchTokens: maxBatchTokens)
        let box = RecordBox()
        scheduler = Scheduler(runner: runner, text: EchoText(), config: config, clock: { box.tick() },
                              publish: { box.records.append($0) })
        self.box = box
    }
    let box: RecordBox

    func submit(_ id: UInt64, _ prompt: String, session: String = "", maxTokens: UInt32 = 1000, stop: [String] = [],
                logprobs: UInt8? = nil) {
        var sampling = WireSampling(temperature: 0, maxTokens: maxTokens)
        sampling.stop = stop
        sampling.logprobs = logprobs
        scheduler.handle(.submit(SubmitRecord(requestID: id, kind: .completion, sessionKey: session,
                                              sampling: sampling, prompt: prompt)))
    }

    func runToIdle(limit: Int = 100_000) throws {
        var n = 0
        while scheduler.hasWork && n < limit { try scheduler.step(); n += 1 }
        #expect(!scheduler.hasWork, "scheduler did not go idle")
    }

    func text(_ id: UInt64) -> String {
        box.records.compactMap { if case .delta(let d) = $0, d.requestID == id { d.text } else { nil } }.joined()
    }

    func done(_ id: UInt64) -> DoneRecord? {
        for r in box.records { if case .done(let d) = r, d.requestID == id { return d } }
        return nil
    }
}

final class RecordBox {
    var records: [Record] = []
    var t: UInt64 = 0
    func tick() -> UInt64 { t += 1000; return t }
}

@Test func echoesThePromptWithUsage() throws {
    let h = Harness()
    h.submit(1, "héllo wörld 😀")
    try h.runToIdle()
    #expect(h.text(1) == "héllo wörld 😀")
    let d = try #require(h.done(1))
    #expect(d.finish == .stop)
    #expect(Int(d.promptTokens) == "héllo wörld 😀".utf8.count)
    #expect(d.completionTokens == d.promptTokens)
    #expect(d.cachedTokens == 0)
    #expect(d.firstTokenNanos > 0 && d.totalNanos >= d.firstTokenNanos)
    #expect(h.runner.freeSlots == 8, "sequence not released")
}

/// The echo engine honours stop strings as the model does: its answer ends before the earliest stop string
/// (finish `stop`), text that might begin one is held back until it cannot, and a max_tokens cut releases
/// what was held.
@Test(arguments: [
    ("hello world", ["o w"], UInt32(1000), "hell", FinishReason.stop),
    ("hello world", ["zz", "wor", "o"], 1000, "hell", .stop),          // the earliest match wins
    ("abcd", ["cdx"], 1000, "abcd", .stop),                           // a prefix at the end is released
    ("héllo wörld", ["ö"], 1000, "héllo w", .stop),                   // multi-byte stop
    ("héllo", ["llo"], 1000, "hé", .stop),
    ("hello world", ["lo"], 3, "hel", .length),                       // held "l" released by the length cut
    ("hello", ["hello"], 1000, "", .stop),                            // the whole answer is the stop
])
func echoHonoursStopStrings(prompt: String, stop: [String], maxTokens: UInt32, text: String, finish: FinishReason) throws {
    let h = Harness()
    h.submit(1, prompt, maxTokens: maxTokens, stop: stop)
    try h.runToIdle()
    #expect(h.text(1) == text)
    #expect(h.done(1)?.finish == finish)
    #expect(h.runner.freeSlots == 8)
}

/// A prompt that does not fit the context is refused before admission with its own code (the front answers
/// 400 `context_length_exceeded`, which clients look for), naming both lengths; one that fits is served.
@Test func promptLongerThanTheContextIsRefused() throws {
    let h = Harness(contextLength: 16)
    h.submit(1, String(repeating: "x", count: 40))
    h.submit(2, "short")
    try h.runToIdle()
    let errors = h.box.records.compactMap { if case .error(let e) = $0 { e } else { nil } }
    #expect(errors.count == 1)
    #expect(errors.first?.requestID == 1)
    #expect(errors.first?.code == .contextLengthExceeded)
    #expect(errors.first?.message.contains("16") == true && errors.first?.message.contains("40") == true)
    #expect(h.done(1) == nil, "a refused request has no done record")
    #expect(h.text(2) == "short")
    #expect(h.runner.freeSlots == 8)
}

@Test func maxTokensEndsWithLength() throws {
    let h = Harness()
    h.submit(1, "abcdefgh", maxTokens: 3)
    try h.runToIdle()
    #expect(h.text(1) == "abc")
    #expect(h.done(1)?.finish == .length)
    #expect(h.done(1)?.completionTokens == 3)
}

@Test func concurrentRequestsShareForwardPasses() throws {
    let h = Harness()
    for i in 1...8 { h.submit(UInt64(i), String(repeating: "x", count: 20)) }
    try h.runToIdle()
    for i in 1...8 { #expect(h.text(UInt64(i)).count == 20) }
    // 8 x (1 prefill + 20 decode) passes if run one by one; batched, all advance together.
    #expect(h.runner.forwardCalls <= 22)
}

@Test func longPromptsArePrefilledInChunksWithoutStallingDecode() throws {
    let h = Harness(maxBatchTokens: 16)
    h.submit(1, String(repeating: "a", count: 40))
    try h.scheduler.step()          // request 1 prefills 16 of 40
    try h.scheduler.step()
    try h.scheduler.step()          // prompt read; first token sampled
    h.submit(2, String(repeating: "b", count: 200))
    var before = h.text(1).count
    // While request 2's 200-token prompt is prefilled 15 tokens per step, request 1 gains a token every step.
    for _ in 0..<10 {
        try h.scheduler.step()
        let now = h.text(1).count
        #expect(now == before + 1)
        before = now
        #expect(h.runner.lastBatchSize == 2)
    }
    try h.runToIdle()
    #expect(h.text(2) == String(repeating: "b", count: 200))
}

@Test func followUpTurnReusesTheSessionCache() throws {
    let h = Harness()
    h.submit(1, "hello", session: "s1")
    try h.runToIdle()
    let first = try #require(h.done(1))
    // Turn 2 extends turn 1's prompt + answer, as a chat history does.
    h.submit(2, "hello" + h.text(1) + " and more", session: "s1")
    try h.runToIdle()
    let second = try #require(h.done(2))
    #expect(second.cachedTokens == first.promptTokens + first.completionTokens)
    #expect(h.text(2) == "hellohello and more")
    // A different session gets nothing from it.
    h.submit(3, "hellohello and more", session: "s2")
    try h.runToIdle()
    #expect(h.done(3)?.cachedTokens == 0)
    // A diverging prompt reuses only the common prefix.
    h.submit(4, "help", session: "s1")
    try h.runToIdle()
    #expect(h.done(4)?.cachedTokens == 3)
}

@Test func identicalPromptLeavesOneTokenToPrefill() throws {
    let h = Harness()
    h.submit(1, "same", session: "s")
    try h.runToIdle()
    h.submit(2, "same", session: "s")
    try h.runToIdle()
    #expect(h.done(2)?.cachedTokens == 3)
    #expect(h.text(2) == "same")
}

@Test func cancelStopsAtTheNextStepAndFreesTheSlot() throws {
    let h = Harness()
    h.submit(1, String(repeating: "z", count: 100))
    try h.scheduler.step()
    try h.scheduler.step()
    h.scheduler.handle(.cancel(CancelRecord(requestID: 1)))
    try h.scheduler.step()
    #expect(h.done(1)?.finish == .cancelled)
    #expect(h.text(1).count < 100)
    #expect(!h.scheduler.hasWork)
    #expect(h.runner.freeSlots == 8)
    // Cancelling a waiting request answers at once.
    h.submit(2, "q")
    h.scheduler.handle(.cancel(CancelRecord(requestID: 2)))
    #expect(h.done(2)?.finish == .cancelled)
}

/// The queue bound counts the requests waiting beyond the running batch: a burst that arrives between two
/// steps fills the batch's free places first (4 here), then the queue (2), and only then is refused; once the
/// batch runs, the free places are gone and the next submits get only the queue.
@Test func fullQueueAnswersOverloaded() throws {
    let h = Harness(config: SchedulerConfig(maxQueue: 2, sessionCacheBytes: 1 << 20, maxRunning: 4))
    for i in 1...7 { h.submit(UInt64(i), "a longer prompt") }
    var errors: [ErrorRecord] { h.box.records.compactMap { if case .error(let e) = $0 { e } else { nil } } }
    #expect(errors.map(\.requestID) == [7])
    #expect(errors.first?.code == .overloaded)
    try h.scheduler.step()   // admits 1-4; 5 and 6 wait
    for i in 8...9 { h.submit(UInt64(i), "x") }
    #expect(errors.map(\.requestID) == [7, 8, 9], "the batch is full and 2 wait: no room for more")
    try h.runToIdle()
    for i in 1...6 { #expect(h.done(UInt64(i)) != nil, "request \(i) was not served") }
}

@Test func sessionsAreEvictedLeastRecentlyUsedFirst() throws {
    // Budget for ~2 sessions of 10 KV tokens at 4 bytes each.
    let h = Harness(slots: 8, config: SchedulerConfig(maxQueue: 8, sessionCacheBytes: 80, maxRunning: 4))
    h.submit(1, "aaaaa", session: "a"); try h.runToIdle()
    h.submit(2, "bbbbb", session: "b"); try h.runToIdle()
    h.submit(3, "ccccc", session: "c"); try h.runToIdle()   // evicts a
    #expect(h.scheduler.stats.cachedSessions == 2)
    #expect(h.scheduler.stats.cachedBytes <= 80)
    h.submit(4, "aaaaaaaaaa!", session: "a"); try h.runToIdle()
    #expect(h.done(4)?.cachedTokens == 0)
    h.submit(5, "cccccccccc!", session: "c"); try h.runToIdle()
    #expect(h.done(5)?.cachedTokens == 10)
}

@Test func slotsRunningOutEvictsIdleSessionsThenWaits() throws {
    let h = Harness(slots: 2, config: SchedulerConfig(maxQueue: 8, sessionCacheBytes: 1 << 20, maxRunning: 4))
    h.submit(1, "a", session: "a"); try h.runToIdle()
    h.submit(2, "b", session: "b"); try h.runToIdle()
    #expect(h.runner.freeSlots == 0)   // both parked
    for i in 3...6 { h.submit(UInt64(i), "xyz") }
    try h.runToIdle()
    for i in 3...6 { #expect(h.text(UInt64(i)) == "xyz") }
}

@Test func tokenizeAndDetokenizeAnswer() throws {
    let h = Harness()
    h.scheduler.handle(.tokenize(TokenizeRecord(requestID: 9, addSpecial: false, parseSpecial: true, content: "hi")))
    h.scheduler.handle(.detokenize(TokensRecord(requestID: 10, tokens: [104, 105])))
    #expect(h.box.records.contains(.tokens(TokensRecord(requestID: 9, tokens: [104, 105]))))
    #expect(h.box.records.contains(.text(TextRecord(requestID: 10, text: "hi"))))
    // Ids outside the vocabulary (the echo runner's is 257) are the client's error, not an empty text.
    for (id, bad) in [(UInt64(11), Int32(999)), (12, -1), (13, 257)] {
        h.scheduler.handle(.detokenize(TokensRecord(requestID: id, tokens: [104, bad])))
        #expect(h.box.records.contains { if case .error(let e) = $0 { e.requestID == id && e.code == .invalidRequest && e.message.contains("\(bad)") } else { false } })
        #expect(!h.box.records.contains { if case .text(let t) = $0 { t.requestID == id } else { false } })
    }
}

@Test func finishedRequestsLeaveRunningInArrivalOrder() throws {
    let h = Harness()
    // Lengths 5, 1, 3, 4 and 2: they finish in the order 2, 5, 3, 4, 1.
    let prompts: [UInt64: String] = [1: "aaaaa", 2: "b", 3: "ccc", 4: "dddd", 5: "ee"]
    for id in UInt64(1)...5 { h.submit(id, prompts[id]!) }
    var steps = 0
    while h.scheduler.hasWork && steps < 100 {
        try h.scheduler.step()
        steps += 1
        let running = h.scheduler.running.map(\.id)
        let unfinished = (UInt64(1)...5).filter { h.done($0) == nil }
        #expect(running == unfinished, "after step \(steps)")
    }
    for id in UInt64(1)...5 { #expect(h.text(id) == prompts[id]!) }
    #expect(h.runner.freeSlots == 8)
}

@Test func workerCPUProbeRunsTheEchoRequestPath() throws {
    let r = try WorkerCPUProbe.run(prompt: "h", iterations: 50)
    #expect(r.requestNs > 0)
    #expect(r.recordsPerRequest == 2)   // one delta, one done
    // Five characters, one of them two bytes: five deltas (whole characters) and a done.
    let u = try WorkerCPUProbe.run(prompt: "héllo", iterations: 50)
    #expect(u.recordsPerRequest == 6)
}

/// Sampling appends to a request's history during the forward pass. No batch item may hold the history's
/// buffer then (a slice of it would make each append copy the whole history: O(length) per token), so with
/// the echo engine's reserved room the history keeps one buffer from the first to the last token, for
/// several sequences decoding together.
@Test func historyIsAppendedInPlace() throws {
    let h = Harness()
    let prompts = [String(repeating: "a", count: 300), String(repeating: "b", count: 200), "c"]
    for (k, p) in prompts.enumerated() { h.submit(UInt64(k + 1), p, maxTokens: 500) }
    // Times a request's history moved to another buffer between two steps (a freed buffer's address can come
    // back, so changes are counted, not distinct addresses).
    var last: [UInt64: UInt] = [:], moves: [UInt64: Int] = [:]
    var steps = 0
    while h.scheduler.hasWork && steps < 10_000 {
        try h.scheduler.step()
        steps += 1
        for r in h.scheduler.running {
            let base = r.history.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) }
            if let l = last[r.id], l != base { moves[r.id, default: 0] += 1 }
            last[r.id] = base
        }
    }
    #expect(!h.scheduler.hasWork)
    for (k, p) in prompts.enumerated() {
        #expect(h.text(UInt64(k + 1)) == p)
        #expect(moves[UInt64(k + 1), default: 0] == 0, "request \(k + 1): history moved \(moves[UInt64(k + 1), default: 0]) times")
    }
}

/// A request that asks for log-probabilities gets one entry per generated token, each published before the
/// delta that carries its text (a token whose text is held back, here the first byte of "é", is sent at once
/// and its text comes with the next delta). The echo engine's logits are uniform over its 257 tokens, so
/// every log-probability is -ln 257 and the alternatives are the lowest ids. A request without them gets none.
@Test func logprobsPrecedeTheirTextAndCoverEveryGeneratedToken() throws {
    let h = Harness()
    h.submit(1, "aé", logprobs: 2)
    h.submit(2, "aé")
    try h.runToIdle()
    var entries: [LogprobEntry] = []
    var bytesBeforeEachDelta: [[UInt8]] = []
    for r in h.box.records {
        switch r {
        case .logprobs(let l):
            #expect(l.requestID == 1)
            entries += l.entries
        case .delta(let d) where d.requestID == 1:
            bytesBeforeEachDelta.append(entries.flatMap { $0.sampled.bytes })
        default: break
        }
    }
    #expect(entries.map(\.sampled.token) == [0x61, 0xC3, 0xA9])
    #expect(entries.map(\.sampled.bytes) == [[0x61], [0xC3], [0xA9]])
    // Each delta's text is covered by the entries sent before it.
    #expect(bytesBeforeEachDelta == [Array("a".utf8), Array("aé".utf8)])
    let uniform = Float(-log(257.0))
    for e in entries {
        #expect(abs(e.sampled.logprob - uniform) < 1e-5)
        #expect(e.top.map(\.token) == [0, 1])
        #expect(e.top.allSatisfy { abs($0.logprob - uniform) < 1e-5 })
    }
    #expect(Int(try #require(h.done(1)).completionTokens) == entries.count)
    #expect(h.text(2) == "aé")
}

/// A completion prompt of token ids is used as given: the echo engine's byte tokens answer with their bytes,
/// prompt_tokens counts the ids, and an id outside its 257 tokens is refused before anything runs.
@Test func tokenIDPromptsAreUsedAsGiven() throws {
    let h = Harness()
    let ids: [Int32] = Array("hé".utf8).map { Int32($0) } + [256]
    h.scheduler.handle(.submit(SubmitRecord(requestID: 1, kind: .completion, sessionKey: "",
                                            sampling: WireSampling(temperature: 0, maxTokens: 100), promptTokens: ids)))
    h.scheduler.handle(.submit(SubmitRecord(requestID: 2, kind: .completion, sessionKey: "",
                                            sampling: WireSampling(maxTokens: 100), promptTokens: [104, 257])))
    try h.runToIdle()
    #expect(h.text(1) == "hé")
    #expect(try #require(h.done(1)).promptTokens == 4)
    let refusal = h.box.records.compactMap { if case .error(let e) = $0, e.requestID == 2 { e } else { nil } }.first
    #expect(refusal?.code == .invalidRequest && refusal?.message.contains("257") == true, "\(String(describing: refusal))")
    #expect(h.done(2) == nil)
}
