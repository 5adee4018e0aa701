// The worker's engine core: continuous batching over a ModelRunner with a per-session KV cache.
//
// One call to `step()` is one iteration of the engine loop (like vLLM's EngineCore.step):
//   1. admit waiting requests while sequence slots are free (reusing a session's cached KV when the new
//      prompt extends it; evicting least-recently-used sessions when slots or the cache budget run out);
//   2. build one batch: one decode token for every running sequence, then prefill chunks of sequences still
//      reading their prompt, up to `maxBatchTokens` (long prompts are chunked so they never stall decoding);
//   3. one forward pass; sample for every sequence whose prompt is fully read;
//   4. publish deltas, and at the end usage + finish reason; park finished sequences in the session cache.
// Records come in through `handle(_:)`; everything goes out through the `publish` closure.
import Engine
import Wire

public struct SchedulerConfig: Sendable {
    /// Requests waiting beyond the running batch (`maxRunning`); beyond this a submit is answered "overloaded".
    public var maxQueue: Int
    /// Session-cache budget in bytes of KV cache held by idle sessions.
    public var sessionCacheBytes: Int
    /// Most sequences decoding together.
    public var maxRunning: Int
    public init(maxQueue: Int = 64, sessionCacheBytes: Int = 256 << 20, maxRunning: Int = 16) {
        self.maxQueue = maxQueue; self.sessionCacheBytes = sessionCacheBytes; self.maxRunning = maxRunning
    }
}

public struct SchedulerStats: Sendable {
    public var running = 0
    public var waiting = 0
    public var cachedSessions = 0
    public var cachedBytes = 0
    public var steps: UInt64 = 0
    public var tokensGenerated: UInt64 = 0
}

public final class Scheduler {
    /// A request in flight.
    final class Request {
        let id: UInt64
        let sessionKey: String
        /// Prompt tokens: the first `promptCount` of `history`.
        let promptCount: Int
        let state: any GenerationState
        let admitted: UInt64              // monotonic ns
        var firstToken: UInt64 = 0
        var sequence: Int = -1
        /// Tokens whose KV is in the cache (prompt prefix, then fed-back completion tokens).
        var kvLength = 0
        var cached = 0                    // prompt tokens served from the session cache
        /// Prompt + sampled tokens; the last one is fed at the next step. Starts as the engine's prompt array
        /// (which may carry spare capacity for the answer: then sampling appends without reallocating).
        var history: [Int32]
        var completionTokens = 0
        var cancelled = false
        /// Done (its final record is published), but its last sampled token, part of the answer, is not in
        /// the KV cache yet: the next step feeds it without sampling, then the sequence is parked. Without
        /// this a follow-up turn (whose prompt repeats the whole answer) would re-prefill that token.
        var feedingFinalToken = false
        /// Log-probabilities asked for: nil = none, n = each generated token's with n alternatives.
        let logprobs: Int?
        init(id: UInt64, sessionKey: String, prompt: [Int32], state: any GenerationState, now: UInt64,
             logprobs: Int? = nil) {
            self.id = id; self.sessionKey = sessionKey; self.promptCount = prompt.count; self.state = state
            self.admitted = now; self.history = prompt; self.logprobs = logprobs
        }
        var promptRemaining: Int { max(0, promptCount - kvLength) }
    }

    /// An idle session's KV cache: the sequence slot and the tokens whose KV it holds.
    struct CachedSession {
        var sequence: Int
        var tokens: [Int32]      // history; KV holds the first `kvLength` of them
        var kvLength: Int
        var lastUse: UInt64
    }

    let runner: ModelRunner
    let text: TextEngine
    let config: SchedulerConfig
    let publish: (Record) -> Void
    let clock: () -> UInt64

    var waiting: [Request] = []
    var running: [Request] = []
    var sessions: [String: CachedSession] = [:]
    var sessionBytes = 0
    public private(set) var stats = SchedulerStats()

    // Reused every step (no per-step allocation once warmed up).
    var items: [StepItem] = []
    var itemOwners: [Request] = []
    var itemCounts: [Int] = []
    /// This step's input tokens, which `items` slice (see step()).
    var stepTokens: [Int32] = []
    let maxItems: Int

    public init(runner: ModelRunner, text: TextEngine, config: SchedulerConfig,
                clock: @escaping () -> UInt64, publish: @escaping (Record) -> Void) {
        self.runner = runner; self.text = text; self.config = config; self.publish = publish; self.clock = clock
        maxItems = max(1, config.maxRunning)
        items.reserveCapacity(maxItems)
        itemOwners.reserveCapacity(maxItems)
    }

    public var hasWork: Bool { !waiting.isEmpty || !running.isEmpty }

    // MARK: Records from the front

    public func handle(_ record: Record) {
        switch record {
        case .submit(let s): submit(s)
        case .cancel(let c): cancel(c.requestID)
        case .tokenize(let t):
            publish(.tokens(TokensRecord(requestID: t.requestID,
                                         tokens: text.tokenize(t.content, addSpecial: t.addSpecial, parseSpecial: t.parseSpecial))))
        case .detokenize(let d):
            if let bad = d.tokens.first(where: { $0 < 0 || Int($0) >= runner.vocabSize }) {
                publish(.error(ErrorRecord(requestID: d.requestID, code: .invalidRequest,
                                           message: "token id \(bad) is outside the vocabulary (0..<\(runner.vocabSize))")))
                return
            }
            publish(.text(TextRecord(requestID: d.requestID, text: text.detokenize(d.tokens))))
        default:
            publish(.error(ErrorRecord(requestID: record.requestID, code: .invalidRequest,
                                       message: "worker does not accept \(record.type) records")))
        }
    }

    func submit(_ s: SubmitRecord) {
        // `waiting` also holds the requests the next step admits at once (a burst that arrived between two
        // steps): only those beyond the running batch's free places count against the queue bound.
        let freePlaces = max(0, config.maxRunning - running.count)
        guard waiting.count < config.maxQueue + freePlaces else {
            publish(.error(ErrorRecord(requestID: s.requestID, code: .overloaded, message: "worker queue is full")))
            return
        }
        do throws(RequestRejection) {
            // Ids given as the prompt must be rows of this model (the tokenizer's list could be longer).
            if let bad = s.promptTokens.first(where: { $0 < 0 || Int($0) >= runner.vocabSize }) {
                throw RequestRejection(.invalidRequest, "prompt token id \(bad) is outside the vocabulary (0..<\(runner.vocabSize))")
            }
            // logit_bias ids likewise (the engine's sampler checks them against its tokenizer's list too).
            if let bad = s.sampling.logitBias.first(where: { $0.token < 0 || Int($0.token) >= runner.vocabSize }) {
                throw RequestRejection(.invalidRequest, "logit_bias token id \(bad.token) is outside the vocabulary (0..<\(runner.vocabSize))")
            }
            let (prompt, state) = try text.begin(s, contextLength: runner.contextLength)
            guard !prompt.isEmpty else {
                throw RequestRejection(.invalidRequest, "the prompt is empty after tokenization")
            }
            guard prompt.count < runner.contextLength else {
                throw RequestRejection(.contextLengthExceeded,
                                       "This model's maximum context length is \(runner.contextLength) tokens; the prompt has \(prompt.count) tokens")
            }
            waiting.append(Request(id: s.requestID, sessionKey: s.sessionKey, prompt: prompt, state: state, now: clock(),
                                   logprobs: s.sampling.logprobs.map { min(Int($0), WireLimits.maxTopLogprobs) }))
        } catch {
            publish(.error(ErrorRecord(requestID: s.requestID, code: error.code, message: error.message)))
        }
    }

    func cancel(_ id: UInt64) {
        if let i = waiting.firstIndex(where: { $0.id == id }) {
            let r = waiting.remove(at: i)
            publish(.done(DoneRecord(requestID: r.id, finish: .cancelled, promptTokens: UInt32(r.promptCount),
                                     completionTokens: 0, cachedTokens: 0)))
        } else if let r = running.first(where: { $0.id == id && !$0.feedingFinalToken }) {
            r.cancelled = true  // stops at the next step
        }
    }

    // MARK: One engine step

    /// Runs one iteration. Returns false when there was nothing to do.
    @discardableResult
    public func step() throws -> Bool {
        // Also on the early returns: a step that only retires cancelled requests must publish the new counts.
        defer { updateStats() }
        retireCancelled()
        admit()
        guard !running.isEmpty else { return false }

        items.removeAllKeepingStorage()
        itemOwners.removeAllKeepingStorage()
        itemCounts.removeAllKeepingStorage()
        stepTokens.removeAllKeepingStorage()
        var budget = runner.maxBatchTokens
        // Decode tokens first: every sequence whose last sampled token is not yet in its KV cache advances by
        // exactly that token.
        for r in running where r.promptRemaining == 0 && r.kvLength == r.history.count - 1
            && budget > 0 && itemOwners.count < maxItems {
            stepTokens.append(r.history[r.kvLength])
            itemOwners.append(r)
            itemCounts.append(1)
            budget -= 1
        }
        // Prefill chunks in arrival order with what is left of the token budget.
        for r in running where r.promptRemaining > 0 && budget > 0 && itemOwners.count < maxItems {
            let n = min(r.promptRemaining, budget)
            stepTokens.append(contentsOf: r.history[r.kvLength ..< r.kvLength + n])
            itemOwners.append(r)
            itemCounts.append(n)
            budget -= n
        }
        // The items' tokens are slices of `stepTokens`, not of the requests' histories: sampling appends to a
        // history during the forward pass, and a slice holding its buffer would make every append copy the
        // whole history.
        var at = 0
        for (i, r) in itemOwners.enumerated() {
            items.append(StepItem(sequence: r.sequence, position: r.kvLength, tokens: stepTokens[at ..< at + itemCounts[i]]))
            at += itemCounts[i]
        }
        guard !items.isEmpty else { return false }

        for (i, r) in itemOwners.enumerated() { r.kvLength += items[i].tokens.count }
        // Requests finishing in this step (sample → complete) set `feedingFinalToken` during the forward
        // pass; only those that had it set before are fed now and parked afterwards.
        let toPark = itemOwners.contains { $0.feedingFinalToken } ? itemOwners.filter { $0.feedingFinalToken } : []
        try runner.forward(items) { i, row in
            let r = itemOwners[i]
            // Still reading its prompt, or feeding its final token: nothing to sample.
            guard r.promptRemaining == 0, !r.feedingFinalToken else { return }
            sample(r, row)
        }
        for r in toPark {
            r.feedingFinalToken = false
            park(r, now: clock())
            r.sequence = -1
        }
        stats.steps += 1
        dropFinished()
        return true
    }

    /// Samples the next token of `r` and publishes what it produced.
    func sample(_ r: Request, _ row: UnsafeBufferPointer<Float>) {
        let outcome = r.state.next(logits: row)
        if r.firstToken == 0 { r.firstToken = clock() }
        if outcome.counts { r.completionTokens += 1; stats.tokensGenerated += 1 }
        // Before the delta with its text: the front attaches entries to the text that follows them.
        // End-of-generation tokens (not counted) have none, as in OpenAI's answers.
        if let n = r.logprobs, outcome.counts { publish(.logprobs(logprobsRecord(r.id, row, outcome.token, top: n))) }
        r.history.append(outcome.token)
        var finish = outcome.finish
        if finish == nil && r.history.count >= runner.contextLength { finish = .length }
        var text = outcome.text
        if finish != nil { let tail = r.state.flush(); if !tail.isEmpty { text += tail } }
        if !text.isEmpty {
            publish(.delta(DeltaRecord(requestID: r.id, completionTokens: UInt32(r.completionTokens), text: text)))
        }
        if let finish { complete(r, finish) }
    }

    /// The sampled token's log-probability under the model (log-softmax of the raw logits, as llama-server's
    /// n_probs and OpenAI's logprobs report it, whatever the temperature) and the `top` most likely tokens.
    func logprobsRecord(_ id: UInt64, _ row: UnsafeBufferPointer<Float>, _ token: Int32, top: Int) -> LogprobsRecord {
        let lse = Logprobs.logSumExp(row)
        let value = Int(token) < row.count && token >= 0 ? Float(Double(row[Int(token)]) - lse) : -.infinity
        // A piece longer than the wire allows (no real vocabulary has one) is cut, not a failed request.
        func bytes(_ id: Int32) -> [UInt8] {
            let b = text.tokenBytes(id)
            return b.count <= WireLimits.maxTokenBytes ? b : Array(b.prefix(WireLimits.maxTokenBytes))
        }
        let sampled = WireTokenLogprob(token: token, bytes: bytes(token), logprob: value)
        let alternatives = Logprobs.top(row, count: top, logSumExp: lse).map {
            WireTokenLogprob(token: $0.id, bytes: bytes($0.id), logprob: $0.logprob)
        }
        return LogprobsRecord(requestID: id, entries: [LogprobEntry(sampled: sampled, top: alternatives)])
    }

    /// Ends every running and waiting request with an error (the forward pass failed). Sequences are
    /// released and the session cache is dropped, since their KV state can no longer be trusted.
    public func failAll(_ message: String) {
        for r in running + waiting where !r.feedingFinalToken {
            publish(.error(ErrorRecord(requestID: r.id, code: .internalError, message: message)))
            publish(.done(DoneRecord(requestID: r.id, finish: .error, promptTokens: UInt32(r.promptCount),
                                     completionTokens: UInt32(r.completionTokens), cachedTokens: UInt32(r.cached))))
            if r.sequence >= 0 { runner.releaseSequence(r.sequence) }
        }
        for r in running where r.feedingFinalToken { runner.releaseSequence(r.sequence) }
        running.removeAll()
        waiting.removeAll()
        while evictLRU() {}
        updateStats()
    }

    func retireCancelled() {
        var any = false
        for r in running where r.cancelled {
            complete(r, .cancelled)
            any = true
        }
        if any { dropFinished() }
    }

    /// Removes the requests whose sequence is gone (finished: `sequence < 0`) from `running`, keeping the
    /// order of the rest. One pass, in place; nothing moves when none finished (most decode steps).
    func dropFinished() {
        var kept = 0
        for i in running.indices where running[i].sequence >= 0 {
            if kept != i { running.swapAt(kept, i) }
            kept += 1
        }
        while running.count > kept { running.removeLast() }
    }

    /// Publishes the final record and parks (or frees) the sequence. Marks `r.sequence = -1`.
    func complete(_ r: Request, _ finish: FinishReason) {
        let now = clock()
        publish(.done(DoneRecord(requestID: r.id, finish: finish, promptTokens: UInt32(r.promptCount),
                                 completionTokens: UInt32(r.completionTokens), cachedTokens: UInt32(r.cached),
                                 firstTokenNanos: r.firstToken > 0 ? r.firstToken - r.admitted : 0,
                                 totalNanos: now - r.admitted)))
        if !r.sessionKey.isEmpty && finish != .cancelled && r.kvLength > 0 {
            // Cut by max_tokens: the last token belongs to the answer a follow-up turn repeats, so feed it
            // (one more step, no sampling) before parking. Stop tokens are not fed: they are not answer text.
            if finish == .length && r.kvLength == r.history.count - 1 && r.history.count <= runner.contextLength {
                r.feedingFinalToken = true   // stays in `running`; step() feeds it, then parks
                return
            }
            park(r, now: now)
        } else {
            runner.releaseSequence(r.sequence)
        }
        r.sequence = -1
    }

    // MARK: Admission and the session cache

    func admit() {
        // The admitted prefix of `waiting` is removed once at the end: when all were admitted (the common
        // case) by emptying the array, which is much cheaper than removeFirst's element shuffle per request.
        var admitted = 0
        defer {
            if admitted == waiting.count { waiting.removeAllKeepingStorage() }
            else if admitted > 0 { waiting.removeFirst(admitted) }
        }
        while admitted < waiting.count && running.count < config.maxRunning {
            let r = waiting[admitted]
            // The session's previous turn has already answered but is still feeding its last token into
            // the KV cache (one step): wait for it to be parked rather than start without the cache.
            if !r.sessionKey.isEmpty && running.contains(where: { $0.feedingFinalToken && $0.sessionKey == r.sessionKey }) {
                break
            }
            if let cached = takeSession(r.sessionKey) {
                // Reuse the longest common prefix of the cached history and the new prompt whose KV is
                // present; always leave at least one prompt token to prefill so the model yields logits.
                var common = 0
                let limit = min(cached.kvLength, cached.tokens.count, r.promptCount - 1)
                while common < limit && cached.tokens[common] == r.history[common] { common += 1 }
                runner.truncateSequence(cached.sequence, to: common)
                r.sequence = cached.sequence
                r.kvLength = common
                r.cached = common
            } else if let seq = acquireEvicting() {
                r.sequence = seq
            } else {
                break  // no slot free: try again next step
            }
            admitted += 1
            running.append(r)
        }
    }

    /// Removes and returns the idle cache entry of `key`, if any.
    func takeSession(_ key: String) -> CachedSession? {
        guard !key.isEmpty, let s = sessions.removeValue(forKey: key) else { return nil }
        sessionBytes -= s.kvLength * runner.kvBytesPerToken
        return s
    }

    func acquireEvicting() -> Int? {
        while true {
            if let s = runner.acquireSequence() { return s }
            guard evictLRU() else { return nil }
        }
    }

    @discardableResult
    func evictLRU() -> Bool {
        guard let (key, victim) = sessions.min(by: { $0.value.lastUse < $1.value.lastUse }) else { return false }
        sessions.removeValue(forKey: key)
        sessionBytes -= victim.kvLength * runner.kvBytesPerToken
        runner.releaseSequence(victim.sequence)
        return true
    }

    func park(_ r: Request, now: UInt64) {
        // A newer turn of the same session may already be cached (concurrent requests): keep the newest.
        if let old = sessions.removeValue(forKey: r.sessionKey) {
            sessionBytes -= old.kvLength * runner.kvBytesPerToken
            runner.releaseSequence(old.sequence)
        }
        let bytes = r.kvLength * runner.kvBytesPerToken
        guard bytes <= config.sessionCacheBytes else {
            runner.releaseSequence(r.sequence)
            return
        }
        while sessionBytes + bytes > config.sessionCacheBytes && evictLRU() {}
        sessions[r.sessionKey] = CachedSession(sequence: r.sequence, tokens: r.history, kvLength: r.kvLength, lastUse: now)
        sessionBytes += bytes
    }

    func updateStats() {
        stats.running = running.count
        stats.waiting = waiting.count
        stats.cachedSessions = sessions.count
        stats.cachedBytes = sessionBytes
    }
}
